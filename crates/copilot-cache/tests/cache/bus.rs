//! The invalidation bus: two instances with L1 in use; a write on one reaches the other's L1.

use std::time::{Duration, Instant};

use copilot_cache::{CacheControl, CacheFlags, CacheSettings, RedisSettings};
use copilot_store::StoreSet;

use crate::{fresh_prefix, policy, redis_url, sqlite, tenant};

pub async fn two_instances(
    url: &str,
) -> (
    StoreSet,
    std::sync::Arc<CacheControl>,
    StoreSet,
    std::sync::Arc<CacheControl>,
) {
    let base = StoreSet::from_backend(sqlite().await);
    let prefix = fresh_prefix();
    let settings = || {
        let redis = RedisSettings::new(url);
        CacheSettings {
            redis: Some(redis),
            flags: CacheFlags {
                conversation: true,
                ..Default::default()
            },
            prefix: prefix.clone(),
            ..Default::default()
        }
    };
    let (a, ca) = CacheControl::build(base.clone(), settings()).unwrap();
    let (b, cb) = CacheControl::build(base, settings()).unwrap();
    let started = Instant::now();
    while !(ca.bus_healthy() && cb.bus_healthy()) {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the bus never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (a, ca, b, cb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_reaches_the_other_l1() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let (a, _ca, b, cb) = two_instances(&url).await;
    let t = tenant("acme");
    a.policies
        .put_policy(&policy(&t, "v1"), None, "admin")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            b.policies
                .get_policy(&t)
                .await
                .unwrap()
                .unwrap()
                .policy
                .default_model,
            "v1"
        );
    }
    let (hits_before, _) = cb.state().caches["policy"].clone().into_hits_misses();
    assert!(hits_before >= 2, "B serves from its caches");
    a.policies
        .put_policy(&policy(&t, "v2"), None, "admin")
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        if b.policies
            .get_policy(&t)
            .await
            .unwrap()
            .unwrap()
            .policy
            .default_model
            == "v2"
        {
            break;
        }
        // The 100 ms figure (p99 well under 1 ms here) is measured by the propagation
        // benchmark; a loaded machine must not fail a working bus.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B still serves v1"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

trait HitsMisses {
    fn into_hits_misses(self) -> (u64, u64);
}

impl HitsMisses for copilot_cache::factory::CacheReport {
    fn into_hits_misses(self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

/// A Redis that accepts connections but never answers (SIGSTOP) is noticed within about a
/// second: the bus turns unhealthy (L1 flushed and bypassed, Redis reported degraded), and
/// healthy again once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_noticed_within_about_a_second() {
    let binary = redis_url("COPILOT_TEST_REDIS_SERVER");
    let port = crate::free_port();
    let redis = crate::faults::OwnRedis::start(&binary, port);
    let (_a, control, _b, _cb) = two_instances(&format!("redis://127.0.0.1:{port}")).await;
    assert_eq!(control.redis_status(), "ok");
    redis.signal("-STOP");
    let paused = Instant::now();
    while control.bus_healthy() {
        assert!(
            paused.elapsed() < Duration::from_millis(2500),
            "a paused Redis went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(control.redis_status(), "degraded");
    eprintln!("paused Redis noticed after {:?}", paused.elapsed());
    redis.signal("-CONT");
    let resumed = Instant::now();
    while !control.bus_healthy() {
        assert!(
            resumed.elapsed() < Duration::from_secs(5),
            "the bus did not recover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes reach the other instance's L1 through the bus, for every cache: B has each row in L1
/// (read twice), A deletes it, and B stops serving it long before any L1 lifetime (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_reach_the_other_instances_l1_for_every_cache() {
    use copilot_domain::config::{ConfigLevel, ConfigPatch};
    use copilot_domain::membership::MembershipInput;
    use copilot_store::conformance::{create, user};
    use serde_json::json;

    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let (a, _ca, b, _cb) = two_instances(&url).await;
    let t = tenant("deletes");
    let u = user("u1");
    a.policies
        .put_policy(&policy(&t, "p"), None, "w")
        .await
        .unwrap();
    let levels = [
        ConfigLevel::Global,
        ConfigLevel::Tenant(t.clone()),
        ConfigLevel::User(t.clone(), u.clone()),
    ];
    let patch = ConfigPatch::from_json(&json!({"mergeMaxMessages": 3})).unwrap();
    for level in &levels {
        a.configs.put_patch(level, &patch, None, "w").await.unwrap();
    }
    let conversation = create(&a, &t, Some("u1")).await;
    let member =
        MembershipInput::from_json(&json!({"role": "member", "status": "active"})).unwrap();
    a.members.put_membership(&t, &u, &member).await.unwrap();

    // B holds every row in L1.
    for _ in 0..2 {
        assert!(b.policies.get_policy(&t).await.unwrap().is_some());
        for level in &levels {
            assert!(b.configs.get_patch(level).await.unwrap().is_some());
        }
        assert!(
            b.conversations
                .get_conversation(&t, &conversation.id)
                .await
                .unwrap()
                .is_some()
        );
        assert!(b.members.get_membership(&t, &u).await.unwrap().is_some());
    }

    a.policies.delete_policy(&t, None).await.unwrap();
    for level in &levels {
        a.configs.delete_patch(level, None).await.unwrap();
    }
    a.conversations
        .delete_conversation(&t, &conversation.id, None)
        .await
        .unwrap();
    a.members.delete_membership(&t, &u).await.unwrap();

    let started = Instant::now();
    loop {
        let mut left = Vec::new();
        if b.policies.get_policy(&t).await.unwrap().is_some() {
            left.push("policy".to_owned());
        }
        for level in &levels {
            if b.configs.get_patch(level).await.unwrap().is_some() {
                left.push(format!("{level:?}"));
            }
        }
        if b.conversations
            .get_conversation(&t, &conversation.id)
            .await
            .unwrap()
            .is_some()
        {
            left.push("conversation".to_owned());
        }
        if b.members.get_membership(&t, &u).await.unwrap().is_some() {
            left.push("membership".to_owned());
        }
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B still serves deleted rows: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
