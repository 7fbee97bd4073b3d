//! DESIGN.md section 9, the cache's share: items 5, 6 and 13 (1, 3 and 10 need the server and
//! the outage machinery: see the cache issue's note).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use copilot_domain::config::{ConfigLevel, ConfigPatch};
use copilot_store::{ConfigStore, PolicyStore};
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

use crate::{counting, fresh_prefix, policy, redis_url, stack, tenant, user};

/// Item 6: "no policy" was never cached, so every request for a tenant without a policy hit the
/// database.
#[tokio::test]
async fn regression_06_no_policy_is_cached() {
    let redis = redis_url("COPILOT_TEST_REDIS_URL");
    for url in [Some(redis.as_str()), None] {
        let store = counting().await;
        let s = stack(store.clone(), url, &fresh_prefix());
        let t = tenant("no-policy");
        for _ in 0..1000 {
            assert!(s.policies.get_policy(&t).await.unwrap().is_none());
        }
        let reads = store.policy_reads.load(Ordering::SeqCst);
        assert!(
            reads <= 3,
            "1000 reads reached the store {reads} times (redis: {url:?})"
        );
        // And a policy created later is seen at once (the write's tombstone replaces "none").
        s.policies
            .put_policy(&policy(&t, "m1"), None, "admin")
            .await
            .unwrap();
        assert_eq!(
            s.policies
                .get_policy(&t)
                .await
                .unwrap()
                .unwrap()
                .policy
                .default_model,
            "m1"
        );
    }
}

/// Item 5: global and tenant config writes did not invalidate per-user cached configs. Two
/// instances share the store and Redis; one writes, the other's users see it at once.
#[tokio::test]
async fn regression_05_global_and_tenant_writes_reach_every_user_at_once() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let store = counting().await;
    let prefix = fresh_prefix();
    let writer = stack(store.clone(), Some(&url), &prefix);
    let reader = stack(store.clone(), Some(&url), &prefix);
    let (t1, t2) = (tenant("t1"), tenant("t2"));
    let users = [
        (t1.clone(), user("u1")),
        (t1.clone(), user("u2")),
        (t2.clone(), user("u3")),
    ];
    for (t, u) in &users {
        let e = reader.configs.get_effective(t, Some(u)).await.unwrap();
        assert_eq!(e.values.merge_max_messages, 100);
    }
    writer
        .configs
        .put_patch(
            &ConfigLevel::Global,
            &ConfigPatch::from_json(&json!({"mergeMaxMessages": 7})).unwrap(),
            None,
            "svc",
        )
        .await
        .unwrap();
    for (t, u) in &users {
        assert_eq!(
            reader
                .configs
                .get_effective(t, Some(u))
                .await
                .unwrap()
                .values
                .merge_max_messages,
            7,
            "{t} {u}"
        );
    }
    writer
        .configs
        .merge_patch(
            &ConfigLevel::Tenant(t1.clone()),
            &json!({"mergeMaxMessages": 8}),
            None,
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(
        reader
            .configs
            .get_effective(&t1, Some(&user("u1")))
            .await
            .unwrap()
            .values
            .merge_max_messages,
        8
    );
    assert_eq!(
        reader
            .configs
            .get_effective(&t1, Some(&user("u2")))
            .await
            .unwrap()
            .values
            .merge_max_messages,
        8
    );
    assert_eq!(
        reader
            .configs
            .get_effective(&t2, Some(&user("u3")))
            .await
            .unwrap()
            .values
            .merge_max_messages,
        7
    );
    writer
        .configs
        .delete_patch(&ConfigLevel::Global, None)
        .await
        .unwrap();
    assert_eq!(
        reader
            .configs
            .get_effective(&t2, Some(&user("u3")))
            .await
            .unwrap()
            .values
            .merge_max_messages,
        100
    );
}

/// Pauses the first fill of the tier: signals `read_done`, waits for `go`.
fn pause_first_fill(read_done: Arc<Notify>, go: Arc<Semaphore>) -> copilot_cache::tier::FillHook {
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    Arc::new(move |_key: &str| {
        let (read_done, go, first) = (read_done.clone(), go.clone(), first.clone());
        Box::pin(async move {
            if first.swap(false, Ordering::SeqCst) {
                read_done.notify_one();
                let _ = go.acquire().await;
            }
        })
    })
}

/// Item 13: a slow reader could refill the cache with an old row after a write. A reader on
/// instance B reads the old row, is held before its fill, a write lands through instance A, then
/// the reader fills: the old row must never be served afterwards, by either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_13_slow_reader_never_refills_an_old_policy() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    for delete in [false, true] {
        let store = counting().await;
        let prefix = fresh_prefix();
        let a = stack(store.clone(), Some(&url), &prefix);
        let b = stack(store.clone(), Some(&url), &prefix);
        let t = tenant("acme");
        // v1 goes to the store directly, so the key is cold in the cache.
        store
            .inner
            .put_policy(&policy(&t, "old"), None, "admin")
            .await
            .unwrap();
        let (read_done, go) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
        b.policies
            .tier()
            .set_fill_hook(Some(pause_first_fill(read_done.clone(), go.clone())));
        let slow = {
            let (b, t) = (b.policies.clone(), t.clone());
            tokio::spawn(async move { b.get_policy(&t).await.unwrap() })
        };
        read_done.notified().await;
        if delete {
            a.policies.delete_policy(&t, None).await.unwrap();
        } else {
            a.policies
                .put_policy(&policy(&t, "new"), None, "admin")
                .await
                .unwrap();
        }
        go.add_permits(1);
        let seen_by_slow = slow.await.unwrap();
        assert_eq!(
            seen_by_slow.unwrap().policy.default_model,
            "old",
            "the slow read started before the write"
        );
        for _ in 0..3 {
            for instance in [&a, &b] {
                let now = instance.policies.get_policy(&t).await.unwrap();
                match delete {
                    true => assert!(now.is_none(), "a deleted policy came back from the cache"),
                    false => assert_eq!(
                        now.unwrap().policy.default_model,
                        "new",
                        "an old row was served after the write"
                    ),
                }
            }
        }
    }
}

/// Item 13 for the config levels: the same race on the global level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_13_slow_reader_never_refills_an_old_config_level() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let store = counting().await;
    let prefix = fresh_prefix();
    let a = stack(store.clone(), Some(&url), &prefix);
    let b = stack(store.clone(), Some(&url), &prefix);
    let old = ConfigPatch::from_json(&json!({"pathMaxMessages": 1})).unwrap();
    store
        .inner
        .put_patch(&ConfigLevel::Global, &old, None, "svc")
        .await
        .unwrap();
    let (read_done, go) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    b.configs
        .tier()
        .set_fill_hook(Some(pause_first_fill(read_done.clone(), go.clone())));
    let slow = {
        let b = b.configs.clone();
        tokio::spawn(async move {
            b.get_effective(&tenant("acme"), Some(&user("u1")))
                .await
                .unwrap()
        })
    };
    read_done.notified().await;
    let new = ConfigPatch::from_json(&json!({"pathMaxMessages": 2})).unwrap();
    a.configs
        .put_patch(&ConfigLevel::Global, &new, None, "svc")
        .await
        .unwrap();
    go.add_permits(3);
    assert_eq!(slow.await.unwrap().values.path_max_messages, 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for instance in [&a, &b] {
        let e = instance
            .configs
            .get_effective(&tenant("acme"), Some(&user("u1")))
            .await
            .unwrap();
        assert_eq!(
            e.values.path_max_messages, 2,
            "an old global level was served after the write"
        );
    }
}

/// Concurrent misses of one key in one process share one store read.
/// Concurrent misses of one key share one store read. The first read is held inside the store
/// until every reader has looked in L2 (counted by a Redis of this test's own): each of them is
/// then either waiting on the flight or, were single flight broken, reading the store too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_flight_shares_one_store_read() {
    let binary = redis_url("COPILOT_TEST_REDIS_SERVER");
    let port = crate::free_port();
    let redis = crate::faults::OwnRedis::start(&binary, port);
    let store = counting().await;
    let s = Arc::new(stack(store.clone(), Some(&redis.url()), &fresh_prefix()));
    let t = tenant("acme");
    store
        .inner
        .put_policy(&policy(&t, "m"), None, "admin")
        .await
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    *store.policy_gate.lock().unwrap() = Some(gate.clone());
    let readers = 20;
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let (s, t) = (s.clone(), t.clone());
        tasks.push(tokio::spawn(async move {
            s.policies.get_policy(&t).await.unwrap().unwrap().version
        }));
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mgets: usize = stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_mget:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if mgets >= readers {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {mgets} readers looked in L2"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.add_permits(readers);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        store.policy_reads.load(Ordering::SeqCst),
        1,
        "{readers} concurrent misses, one store read"
    );
}

/// Item 13 for the conversation and membership caches: the same race through the factory's
/// decorators (a slow reader on B, a write on A in between).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_13_slow_reader_never_refills_an_old_conversation_or_membership() {
    use copilot_cache::{CachedConversationStore, CachedMembershipStore};
    use copilot_domain::TenantRole;
    use copilot_domain::conversation::{ConversationUpdate, ShareAudience, TenantAccess};
    use copilot_domain::membership::{MembershipInput, MembershipStatus};
    use copilot_store::conformance::new_conversation;
    use copilot_store::{ConversationStore, MembershipStore};

    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let store = counting().await;
    let prefix = fresh_prefix();
    let tier = |name: &'static str| {
        let redis = copilot_cache::RedisSettings::new(&url);
        let l2 = Arc::new(copilot_cache::RedisL2::new(&redis).unwrap());
        let settings = copilot_cache::TierSettings {
            prefix: prefix.clone(),
            ..copilot_cache::TierSettings::new(name, Duration::from_secs(60))
        };
        (settings, l2)
    };
    let conversations = |name| {
        let (settings, l2) = tier(name);
        Arc::new(CachedConversationStore::new(
            store.inner.clone(),
            copilot_cache::CacheTier::new(settings, Some(l2)),
        ))
    };
    let members = |name| {
        let (settings, l2) = tier(name);
        Arc::new(CachedMembershipStore::new(
            store.inner.clone(),
            copilot_cache::CacheTier::new(settings, Some(l2)),
        ))
    };
    let t = tenant("acme");

    // Conversation: private, read slowly on B while A shares it with the tenant.
    let (a, b) = (conversations("conversation"), conversations("conversation"));
    let c = store
        .inner
        .create_conversation(&new_conversation(
            &t,
            Some("owner"),
            ShareAudience::Private,
            TenantAccess::View,
        ))
        .await
        .unwrap();
    let (read_done, go) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    b.tier()
        .set_fill_hook(Some(pause_first_fill(read_done.clone(), go.clone())));
    let slow = {
        let (b, t, id) = (b.clone(), t.clone(), c.id);
        tokio::spawn(async move { b.get_conversation(&t, &id).await.unwrap().unwrap() })
    };
    read_done.notified().await;
    let update = ConversationUpdate {
        share_audience: Some(ShareAudience::Tenant),
        ..Default::default()
    };
    a.update_conversation(&t, &c.id, &update, None)
        .await
        .unwrap();
    go.add_permits(1);
    assert_eq!(slow.await.unwrap().share_audience, ShareAudience::Private);
    for instance in [&a, &b] {
        let now = instance.get_conversation(&t, &c.id).await.unwrap().unwrap();
        assert_eq!(
            now.share_audience,
            ShareAudience::Tenant,
            "an old conversation record was served after the write"
        );
    }

    // Membership: active, read slowly on B while A suspends it.
    let (a, b) = (members("auth"), members("auth"));
    let u = user("bob");
    let active = MembershipInput {
        role: TenantRole::Member,
        status: MembershipStatus::Active,
    };
    store.inner.put_membership(&t, &u, &active).await.unwrap();
    let (read_done, go) = (Arc::new(Notify::new()), Arc::new(Semaphore::new(0)));
    b.tier()
        .set_fill_hook(Some(pause_first_fill(read_done.clone(), go.clone())));
    let slow = {
        let (b, t, u) = (b.clone(), t.clone(), u.clone());
        tokio::spawn(async move { b.get_membership(&t, &u).await.unwrap().unwrap() })
    };
    read_done.notified().await;
    let suspended = MembershipInput {
        role: TenantRole::Member,
        status: MembershipStatus::Suspended,
    };
    a.put_membership(&t, &u, &suspended).await.unwrap();
    go.add_permits(1);
    assert!(slow.await.unwrap().is_active());
    for instance in [&a, &b] {
        let now = instance.get_membership(&t, &u).await.unwrap().unwrap();
        assert!(
            !now.is_active(),
            "a suspended membership came back active from the cache"
        );
    }
}

/// Issue "Hardening" item 4: an L2 row older than what this process already knows (its own
/// write's tombstone) is never returned, even where L1 itself is not trusted (no bus here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l2_row_older_than_l1_knows_is_not_served() {
    use copilot_cache::{CacheTier, RedisL2, RedisSettings, TierSettings};
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let l2 = Arc::new(RedisL2::new(&RedisSettings::new(&url)).unwrap());
    let mut settings = TierSettings::new("test", Duration::from_secs(60));
    settings.prefix = fresh_prefix();
    let tier = Arc::new(CacheTier::<String>::new(settings, Some(l2.clone())));
    let key = format!("{}:k", tier.settings().prefix);
    // This process wrote version 7; then something put version 5 into Redis behind the
    // protocol's back (a Redis restored from an old snapshot, say).
    tier.invalidate(&key, 7).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tier.pending_invalidations() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tombstone never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(l2.set(&key, "5|v|\"old\"").await);
    let got = tier
        .get(&key, || async { Ok(Some((7, "new".to_owned()))) })
        .await
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("new"));
}

/// Issue "Hardening" item 4: the post-commit invalidation ran inside the caller's future, so a
/// client that hung up at the wrong moment left Redis with the old row. Writes whose futures
/// are dropped at every point still leave Redis no older than the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_future_still_invalidates() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    // The factory's stack: a future dropped inside the store call, after its commit, never
    // reaches the cache code; the change log (drained every 100 ms here) covers that case.
    let store = crate::sqlite().await;
    let prefix = fresh_prefix();
    let (s, _control) = copilot_cache::CacheControl::build(
        copilot_store::StoreSet::from_backend(store.clone()),
        copilot_cache::CacheSettings {
            redis: Some(copilot_cache::RedisSettings::new(&url)),
            prefix: prefix.clone(),
            drain_every: Duration::from_millis(100),
            drain_settle: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .unwrap();
    let l2 = copilot_cache::RedisL2::new(&copilot_cache::RedisSettings::new(&url)).unwrap();
    let t = tenant("dropped");
    let key = format!("{prefix}:v1:{{{}}}:policy", t.as_str());
    s.policies
        .put_policy(&policy(&t, "v0"), None, "w")
        .await
        .unwrap();
    for attempt in 1..=40u64 {
        // Give up on the write after a while that falls anywhere between its commit and its
        // cache work.
        let _ = tokio::time::timeout(
            Duration::from_micros(attempt * 150),
            s.policies
                .put_policy(&policy(&t, &format!("v{attempt}")), None, "w"),
        )
        .await;
        let truth = store.get_policy(&t).await.unwrap().unwrap().version;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let cached: u64 = l2
                .get(&key)
                .await
                .flatten()
                .and_then(|e| e.split('|').next().and_then(|v| v.parse().ok()))
                .unwrap_or(0);
            if cached >= truth {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "attempt {attempt}: Redis kept version {cached}, the store has {truth}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A PostgreSQL-only fleet (no Redis): a writer that died between its commit and its
/// announcement (announcements are sent after the commit) leaves its change in the change log,
/// and the drainer announces it again, so another instance's L1 does not keep the old row for
/// its whole lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_announcement_was_lost_reaches_the_fleet_without_redis() {
    let url = copilot_store::conformance::fresh_postgres_database().await;
    // The writer records its changes but never announces them: it "died" after each commit.
    let silent_writer = copilot_store::PostgresStore::open(copilot_store::PostgresOptions {
        record_changes: true,
        notify_changes: false,
        ..copilot_store::PostgresOptions::new(&url)
    })
    .await
    .unwrap();
    let (reader, control) = copilot_cache::CacheControl::build(
        crate::postgres_with_feed(&url, true).await,
        copilot_cache::CacheSettings {
            prefix: fresh_prefix(),
            drain_every: Duration::from_millis(100),
            drain_settle: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .unwrap();
    let t = tenant("lost-announcement");
    silent_writer
        .put_policy(&policy(&t, "v1"), None, "w")
        .await
        .unwrap();
    // L1 is trusted once the feed is healthy; then the reader holds v1 in it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !control.l1_trust().0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = reader.policies.get_policy(&t).await.unwrap().unwrap();
    assert_eq!(got.policy.default_model, "v1");
    silent_writer
        .put_policy(&policy(&t, "v2"), None, "w")
        .await
        .unwrap();
    let written = tokio::time::Instant::now();
    loop {
        let got = reader.policies.get_policy(&t).await.unwrap().unwrap();
        if got.policy.default_model == "v2" {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(5),
            "the reader kept the old row: the lost announcement was never made again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The memoized effective configuration (issue "Speed"): answered without touching the levels
/// while L1 is unchanged, never after a write to any of its three levels, and never past the
/// L1 lifetime of the entries it was merged from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memoized_effective_config_follows_every_level_and_the_l1_lifetime() {
    use copilot_cache::{CacheTier, CachedConfigStore, TierSettings};
    let store = counting().await;
    let mut settings = TierSettings::new("config", Duration::from_secs(300));
    settings.l1_ttl = Duration::from_millis(400);
    let configs = CachedConfigStore::new(store.clone(), CacheTier::new(settings, None));
    let (t, u) = (tenant("memo"), user("u1"));
    let read = || async { configs.get_effective(&t, Some(&u)).await.unwrap() };
    let reads = || store.patch_reads.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(read().await.values.merge_max_messages, 100);
    let after_fill = reads();
    for _ in 0..100 {
        assert_eq!(read().await.values.merge_max_messages, 100);
    }
    assert_eq!(reads(), after_fill, "memoized reads went to the store");
    for (level, value) in [
        (ConfigLevel::Global, 7),
        (ConfigLevel::Tenant(t.clone()), 8),
        (ConfigLevel::User(t.clone(), u.clone()), 9),
    ] {
        configs
            .put_patch(
                &level,
                &ConfigPatch::from_json(&json!({"mergeMaxMessages": value})).unwrap(),
                None,
                "svc",
            )
            .await
            .unwrap();
        assert_eq!(read().await.values.merge_max_messages, value, "{level:?}");
    }
    // A write that bypasses this process (another instance, no bus here) shows once the L1
    // entries the memo came from expire.
    store
        .inner
        .put_patch(
            &ConfigLevel::User(t.clone(), u.clone()),
            &ConfigPatch::from_json(&json!({"mergeMaxMessages": 11})).unwrap(),
            None,
            "elsewhere",
        )
        .await
        .unwrap();
    assert_eq!(
        read().await.values.merge_max_messages,
        9,
        "L1 (and the memo) still answer"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read().await.values.merge_max_messages, 11);
}
