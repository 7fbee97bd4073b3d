//! Issue "Hardening", "what it must show": one key hammered from two instances over one
//! PostgreSQL and one Redis, writes and reads mixed, Redis healthy and then paused mid-run; at
//! the end every instance and Redis agree with the row PostgreSQL holds, by the protocol
//! (tombstones, the bus, the change log), long before any TTL could have done it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use copilot_cache::{CacheControl, CacheFlags, CacheSettings, RedisL2, RedisSettings};
use copilot_store::{PolicyStore, PostgresOptions, PostgresStore, StoreSet};

use crate::faults::OwnRedis;
use crate::{fresh_prefix, policy, redis_url, tenant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_hammering_one_key_converge_to_the_postgres_row() {
    let binary = redis_url("COPILOT_TEST_REDIS_SERVER");
    let database = copilot_store::conformance::fresh_postgres_database().await;
    let port = crate::free_port();
    let redis = OwnRedis::start(&binary, port);
    let store = Arc::new(
        PostgresStore::open(PostgresOptions {
            record_changes: true,
            acquire_timeout: Duration::from_secs(10),
            ..PostgresOptions::new(&database)
        })
        .await
        .expect("postgres"),
    );
    let prefix = fresh_prefix();
    let settings = || CacheSettings {
        redis: Some(RedisSettings::new(redis.url())),
        flags: CacheFlags::default(),
        prefix: prefix.clone(),
        drain_every: Duration::from_millis(200),
        drain_settle: Duration::from_millis(500),
        // Far beyond the test: convergence cannot come from expiry.
        policy_ttl: Duration::from_secs(3_600),
        ..Default::default()
    };
    let (a, _a_control) =
        CacheControl::build(StoreSet::from_backend(store.clone()), settings()).unwrap();
    let (b, _b_control) =
        CacheControl::build(StoreSet::from_backend(store.clone()), settings()).unwrap();
    let t = tenant("hammered");
    a.policies
        .put_policy(&policy(&t, "start"), None, "w")
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (name, stores) in [("a", a.clone()), ("b", b.clone())] {
        for worker in 0..3 {
            let (stores, stop, t) = (stores.clone(), stop.clone(), t.clone());
            workers.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    if i.is_multiple_of(3) {
                        let model = format!("{name}{worker}-{i}");
                        // Writes may fail only if PostgreSQL does; it does not here.
                        stores
                            .policies
                            .put_policy(&policy(&t, &model), None, "w")
                            .await
                            .expect("write");
                    } else {
                        stores.policies.get_policy(&t).await.expect("read");
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    redis.signal("-STOP");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    redis.signal("-CONT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    // The truth, straight from PostgreSQL.
    let truth = store.get_policy(&t).await.unwrap().expect("row");
    let probe = RedisL2::new(&RedisSettings::new(redis.url())).unwrap();
    let key = format!("{prefix}:v1:{{{}}}:policy", t.as_str());
    let started = Instant::now();
    loop {
        let mut agreed = true;
        for stores in [&a, &b] {
            let seen = stores.policies.get_policy(&t).await.unwrap().expect("row");
            agreed &= seen.version == truth.version
                && seen.policy.default_model == truth.policy.default_model;
        }
        // Redis holds the same version, a tombstone at least as new, or nothing.
        let in_redis = probe.get(&key).await;
        agreed &= match &in_redis {
            Some(Some(entry)) => {
                let version: u64 = entry
                    .split('|')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                version > truth.version
                    || (version == truth.version
                        && (entry.contains("|t|") || entry.contains(&truth.policy.default_model)))
            }
            Some(None) => true,
            None => false,
        };
        if agreed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no convergence to version {} ({}); Redis has {in_redis:?}",
            truth.version,
            truth.policy.default_model
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
