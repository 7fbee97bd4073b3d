//! The global kill switch across a fleet (issue "Hardening" item 7): its precedence over the
//! environment, and a change Redis did not take is reported, not pretended.

use std::time::{Duration, Instant};

use copilot_cache::{CacheControl, CacheFlags, CacheSettings, RedisSettings};
use copilot_store::StoreSet;

use crate::{fresh_prefix, redis_url, sqlite};

async fn control(url: &str, prefix: &str, configured: bool) -> std::sync::Arc<CacheControl> {
    let settings = CacheSettings {
        redis: Some(RedisSettings::new(url)),
        flags: CacheFlags {
            global: configured,
            ..Default::default()
        },
        prefix: prefix.to_owned(),
        ..Default::default()
    };
    let (_, control) =
        CacheControl::build(StoreSet::from_backend(sqlite().await), settings).unwrap();
    control.follow_switch(Duration::from_millis(50));
    control
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switch_off_is_fleet_wide_on_restores_each_configuration_and_env_off_wins() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let prefix = fresh_prefix();
    let (a, b) = (
        control(&url, &prefix, true).await,
        control(&url, &prefix, true).await,
    );
    let off_by_env = control(&url, &prefix, false).await;
    assert!(a.set_enabled(false).await);
    eventually("B follows the fleet's off", || !b.enabled()).await;
    // A new instance configured on joins a fleet that is switched off: it is off too.
    let late = control(&url, &prefix, true).await;
    eventually("a new instance follows the fleet's off", || !late.enabled()).await;
    assert!(b.set_enabled(true).await);
    eventually("on again everywhere", || a.enabled() && late.enabled()).await;
    // ENABLE_REDIS_CACHING=false on an instance: its caches stay off whatever the fleet says.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!off_by_env.enabled());
    assert!(off_by_env.set_enabled(true).await);
    assert!(!off_by_env.enabled());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_redis_did_not_take_is_reported_and_changes_nothing() {
    let dead = crate::dead_redis_url();
    let control = control(&dead, &fresh_prefix(), true).await;
    assert!(!control.set_enabled(false).await, "reported as not taken");
    assert!(control.enabled(), "and nothing changed here");
}
