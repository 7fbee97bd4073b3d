//! Issue "Speed": L1 stays fresh across instances without Redis. Two real `serve` processes
//! over one PostgreSQL: every write on A is read on B within 100 ms, 1,000 times over, with no
//! Redis at all (the PostgreSQL change feed is the only invalidation path), and again with a
//! Redis that stops answering (SIGSTOP) while the instances believe it healthy.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleet::{Instance, OwnRedis, fleet, service_token};

const ROUNDS: usize = 1_000;
const FRESH_WITHIN: Duration = Duration::from_millis(100);

/// Writes the policy on `a` `ROUNDS` times; after each write, reads it on `b` until it shows
/// the new model. Returns how many rounds were still stale on `b` after `FRESH_WITHIN`.
async fn stale_rounds(a: &Instance, b: &Instance) -> usize {
    stale_rounds_of(a, b, ROUNDS).await
}

/// [`stale_rounds`] with `rounds` rounds.
pub(crate) async fn stale_rounds_of(a: &Instance, b: &Instance, rounds: usize) -> usize {
    let client = reqwest::Client::new();
    let token = service_token();
    let path = "/v1/tenants/acme/llm-policy";
    let mut stale = 0;
    for round in 0..rounds {
        let model = format!("model-{round}");
        let written = client
            .put(format!("{}{path}", a.base))
            .bearer_auth(&token)
            .json(&json!({"defaultModel": model, "defaultProvider": "openai"}))
            .send()
            .await
            .expect("write on A");
        assert_eq!(written.status(), 200, "write {round} on A");
        let written_at = Instant::now();
        loop {
            let read: Value = client
                .get(format!("{}{path}", b.base))
                .bearer_auth(&token)
                .send()
                .await
                .expect("read on B")
                .json()
                .await
                .expect("json");
            if read["defaultModel"] == model.as_str() {
                break;
            }
            if written_at.elapsed() > FRESH_WITHIN {
                stale += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // B keeps the row in L1 between rounds: the next write must invalidate it there.
    }
    stale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_write_on_a_is_read_on_b_within_100_ms_every_time() {
    let Some(instances) = fleet(2, None, &[]).await else {
        return;
    };
    let stale = stale_rounds(&instances[0], &instances[1]).await;
    assert_eq!(
        stale, 0,
        "{stale} of {ROUNDS} reads on B were stale after 100 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_paused_a_write_on_a_is_read_on_b_within_100_ms_every_time() {
    let binary = crate::fleet::service("COPILOT_TEST_REDIS_SERVER");
    let redis = OwnRedis::start(&binary);
    let Some(instances) = fleet(2, Some(&redis.url()), &[]).await else {
        return;
    };
    // Warm B's caches while everything is healthy, then Redis stops answering.
    let _ = stale_rounds_once(&instances[0], &instances[1]).await;
    redis.signal("-STOP");
    let stale = stale_rounds(&instances[0], &instances[1]).await;
    redis.signal("-CONT");
    assert_eq!(
        stale, 0,
        "{stale} of {ROUNDS} reads on B were stale after 100 ms"
    );
}

/// One round, to fill caches.
async fn stale_rounds_once(a: &Instance, b: &Instance) -> Value {
    let client = reqwest::Client::new();
    let token = service_token();
    let path = "/v1/tenants/acme/llm-policy";
    client
        .put(format!("{}{path}", a.base))
        .bearer_auth(&token)
        .json(&json!({"defaultModel": "warm", "defaultProvider": "openai"}))
        .send()
        .await
        .expect("write on A");
    client
        .get(format!("{}{path}", b.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("read on B")
        .json()
        .await
        .expect("json")
}
