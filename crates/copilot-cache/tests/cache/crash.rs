//! DESIGN.md 5.3: "a process that dies before [its invalidation reached Redis] must not leave
//! Redis serving the old row past its TTL when Redis returns". The write is recorded in the change
//! log in its own transaction; any instance's drainer re-sends the invalidation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use copilot_cache::{CacheControl, CacheFlags, CacheSettings, RedisSettings};
use copilot_store::{SqliteStore, StoreSet};

use crate::{fresh_prefix, policy, redis_url, sqlite, tenant};

fn settings(url: &str, prefix: &str) -> CacheSettings {
    let redis = RedisSettings::new(url);
    CacheSettings {
        redis: Some(redis),
        flags: CacheFlags::default(),
        prefix: prefix.to_owned(),
        drain_every: Duration::from_millis(100),
        drain_settle: Duration::from_millis(200),
        ..Default::default()
    }
}

async fn instance(
    store: &Arc<SqliteStore>,
    url: &str,
    prefix: &str,
) -> (StoreSet, Arc<CacheControl>) {
    CacheControl::build(StoreSet::from_backend(store.clone()), settings(url, prefix)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_lost_in_a_crash_is_resent_from_the_change_log() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let store = sqlite().await;
    let prefix = fresh_prefix();
    let t = tenant("acme");

    // v1 through a healthy instance: Redis holds it.
    {
        let (a, _control) = instance(&store, &url, &prefix).await;
        a.policies
            .put_policy(&policy(&t, "v1"), None, "admin")
            .await
            .unwrap();
        assert_eq!(
            a.policies
                .get_policy(&t)
                .await
                .unwrap()
                .unwrap()
                .policy
                .default_model,
            "v1"
        );
    }

    // A writer that cannot reach Redis commits v2, then "dies" before any retry could land
    // (its Redis address is a closed port, and it is dropped right away).
    {
        let (w, _control) = instance(&store, "redis://127.0.0.1:1", &prefix).await;
        w.policies
            .put_policy(&policy(&t, "v2"), None, "admin")
            .await
            .unwrap();
    }

    // Redis still holds v1. A reader (with its drainer running) must see v2 soon, long before
    // the 300 s TTL, and never v1 again after that.
    let (r, _control) = instance(&store, &url, &prefix).await;
    let started = Instant::now();
    loop {
        let model = r
            .policies
            .get_policy(&t)
            .await
            .unwrap()
            .unwrap()
            .policy
            .default_model
            .clone();
        if model == "v2" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "Redis kept serving the old row"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        assert_eq!(
            r.policies
                .get_policy(&t)
                .await
                .unwrap()
                .unwrap()
                .policy
                .default_model,
            "v2"
        );
    }
    let started = Instant::now();
    while !store.changes_before_now_is_empty().await {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the change log was not drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

trait DrainedCheck {
    async fn changes_before_now_is_empty(&self) -> bool;
}

impl DrainedCheck for Arc<SqliteStore> {
    async fn changes_before_now_is_empty(&self) -> bool {
        use copilot_store::ChangeLog;
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        self.changes_before(later, 10).await.unwrap().is_empty()
    }
}

/// Issue "Hardening" item 6: every instance re-read and re-sent the same change rows, so the
/// work grew with the fleet. Three instances drain one change log: each change is published
/// once, and the log empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_drain_the_change_log_once() {
    use copilot_store::PolicyStore;
    use futures::StreamExt;
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let store = sqlite().await;
    let prefix = fresh_prefix();
    // Writes that reached the store but whose invalidations never went out (a crash).
    let count = 20;
    for i in 0..count {
        store
            .put_policy(&policy(&tenant(&format!("t{i}")), "v"), None, "w")
            .await
            .unwrap();
    }
    // Any node hears every PUBLISH, in a cluster too.
    let client = copilot_cache::RedisSettings::new(url.as_str())
        .client()
        .unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{prefix}:v1:invalidations"))
        .await
        .unwrap();
    let mut messages = pubsub.into_on_message();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(instance(&store, &url, &prefix).await);
    }
    let started = Instant::now();
    while !store.changes_before_now_is_empty().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the change log was not drained"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let any duplicate arrive, then count what was sent for these policies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(instances);
    let mut sent = std::collections::HashMap::<String, usize>::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(200), messages.next()).await
    {
        let payload: String = message.get_payload().unwrap();
        if payload.starts_with("i|policy|") {
            *sent.entry(payload).or_default() += 1;
        }
    }
    assert_eq!(sent.len(), count, "one invalidation per change: {sent:?}");
    assert!(
        sent.values().all(|n| *n == 1),
        "a change was sent more than once: {sent:?}"
    );
}
