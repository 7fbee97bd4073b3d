//! The cache tier against a real Redis: the conformance suite through the caching decorators
//! with Redis up, down (nothing listening), paused (SIGSTOP) and absent (L1 only), and the
//! regression tests of DESIGN.md section 9 that belong to the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use copilot_cache::{
    CacheControl, CacheFlags, CacheSettings, CacheTier, CachedConfigStore, CachedPolicyStore,
    RedisL2, RedisSettings, TierSettings,
};
use copilot_domain::config::{ConfigLevel, ConfigPatch, StoredPatch};
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use copilot_domain::{TenantId, UserId};
use copilot_store::{ConfigStore, PolicyStore, SqliteOptions, SqliteStore, StoreResult, StoreSet};
use serde_json::json;

mod bus;
mod converge;
mod crash;
mod events;
mod faults;
mod regressions;
mod switch;
mod tls;

/// A service of the test script by its variable; a test without it fails, naming it.
pub fn redis_url(var: &str) -> String {
    copilot_store::conformance::test_service(var)
}

/// A loopback port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A Redis URL where nothing answers: every call fails at once.
pub fn dead_redis_url() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

/// A key prefix no other test uses, so tests can share one Redis.
pub fn fresh_prefix() -> String {
    format!("test{}", uuid_like())
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}x{}x{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn sqlite() -> Arc<SqliteStore> {
    let dir = tempfile::tempdir().expect("temp dir").keep();
    let url = format!("sqlite://{}/cache.db", dir.display());
    Arc::new(
        SqliteStore::open(SqliteOptions {
            record_changes: true,
            ..SqliteOptions::new(url)
        })
        .await
        .expect("sqlite"),
    )
}

/// A store that counts the policy and config reads that reach it.
pub struct Counting {
    pub inner: Arc<SqliteStore>,
    pub policy_reads: AtomicUsize,
    pub patch_reads: AtomicUsize,
    /// While set, every policy read waits for a permit (to hold readers inside the load).
    pub policy_gate: std::sync::Mutex<Option<Arc<tokio::sync::Semaphore>>>,
}

#[async_trait]
impl PolicyStore for Counting {
    async fn get_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>> {
        self.policy_reads.fetch_add(1, Ordering::SeqCst);
        let gate = self
            .policy_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(gate) = gate {
            let _ = gate.acquire().await.map(|p| p.forget());
        }
        self.inner.get_policy(tenant).await
    }
    async fn put_policy(
        &self,
        p: &TenantLlmPolicy,
        e: Option<u64>,
        a: &str,
    ) -> StoreResult<StoredPolicy> {
        self.inner.put_policy(p, e, a).await
    }
    async fn delete_policy(&self, t: &TenantId, e: Option<u64>) -> StoreResult<u64> {
        self.inner.delete_policy(t, e).await
    }
}

#[async_trait]
impl ConfigStore for Counting {
    async fn get_patch(&self, level: &ConfigLevel) -> StoreResult<Option<StoredPatch>> {
        self.patch_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_patch(level).await
    }
    async fn put_patch(
        &self,
        l: &ConfigLevel,
        p: &ConfigPatch,
        e: Option<u64>,
        a: &str,
    ) -> StoreResult<StoredPatch> {
        self.inner.put_patch(l, p, e, a).await
    }
    async fn merge_patch(
        &self,
        l: &ConfigLevel,
        m: &serde_json::Value,
        e: Option<u64>,
        a: &str,
    ) -> StoreResult<StoredPatch> {
        self.inner.merge_patch(l, m, e, a).await
    }
    async fn delete_patch(&self, l: &ConfigLevel, e: Option<u64>) -> StoreResult<u64> {
        self.inner.delete_patch(l, e).await
    }
}

/// One instance's cache stack over a shared store.
pub struct Stack {
    pub policies: Arc<CachedPolicyStore>,
    pub configs: Arc<CachedConfigStore>,
    pub l2: Option<Arc<RedisL2>>,
}

pub fn stack(store: Arc<Counting>, redis: Option<&str>, prefix: &str) -> Stack {
    stack_over(store, redis.map(RedisSettings::new), prefix)
}

/// [`stack`] with Redis settings of the caller's (TLS, credentials).
pub fn stack_over(store: Arc<Counting>, redis: Option<RedisSettings>, prefix: &str) -> Stack {
    let l2 = redis.map(|settings| Arc::new(RedisL2::new(&settings).expect("redis client")));
    let tier = |name: &'static str| {
        let mut s = TierSettings::new(name, Duration::from_secs(300));
        s.prefix = prefix.to_owned();
        s
    };
    Stack {
        policies: Arc::new(CachedPolicyStore::new(
            store.clone(),
            CacheTier::new(tier("policy"), l2.clone()),
        )),
        configs: Arc::new(CachedConfigStore::new(
            store,
            CacheTier::new(tier("config"), l2.clone()),
        )),
        l2,
    }
}

pub async fn counting() -> Arc<Counting> {
    Arc::new(Counting {
        inner: sqlite().await,
        policy_reads: AtomicUsize::new(0),
        patch_reads: AtomicUsize::new(0),
        policy_gate: std::sync::Mutex::new(None),
    })
}

/// The stores of one cached instance built by the factory: all four decorators (conversation
/// caching switched on too) over SQLite.
pub async fn cached_store_set(redis: Option<&str>) -> StoreSet {
    cached_over(StoreSet::from_backend(sqlite().await), redis, true)
}

/// The same over a fresh PostgreSQL database, as `serve` builds it: changes announced to the
/// change feed, and recorded for the drainer (the suite checks the change log).
pub async fn cached_postgres_store_set(redis: Option<&str>) -> StoreSet {
    let url = copilot_store::conformance::fresh_postgres_database().await;
    cached_over(postgres_with_feed(&url, true).await, redis, true)
}

/// A store over the PostgreSQL database at `url` with its change feed, as `serve` opens it.
pub async fn postgres_with_feed(url: &str, record_changes: bool) -> StoreSet {
    let store = copilot_store::PostgresStore::open(copilot_store::PostgresOptions {
        record_changes,
        notify_changes: true,
        acquire_timeout: Duration::from_secs(10),
        ..copilot_store::PostgresOptions::new(url)
    })
    .await
    .expect("postgres");
    let feed = Arc::new(store.change_feed(None).expect("feed"));
    StoreSet::from_backend(Arc::new(store)).with_feed(feed)
}

/// `shared`: other processes write the store too (L1 needs an invalidation path).
fn cached_over(base: StoreSet, redis: Option<&str>, shared: bool) -> StoreSet {
    let prefix = fresh_prefix();
    let settings = CacheSettings {
        redis: redis.map(RedisSettings::new),
        flags: CacheFlags {
            conversation: true,
            ..Default::default()
        },
        prefix,
        shared_store: shared,
        ..Default::default()
    };
    CacheControl::build(base, settings).expect("cache").0
}

pub fn policy(tenant: &TenantId, model: &str) -> TenantLlmPolicy {
    TenantLlmPolicy::from_json(
        &json!({"defaultModel": model, "defaultProvider": "openai"}),
        tenant,
    )
    .expect("policy")
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("tenant")
}

pub fn user(name: &str) -> UserId {
    UserId::parse(name).expect("user")
}

mod redis_up {
    async fn make() -> Option<copilot_store::StoreSet> {
        let url = super::redis_url("COPILOT_TEST_REDIS_URL");
        Some(super::cached_store_set(Some(&url)).await)
    }
    copilot_store::conformance_suite!(optional make);
}

mod redis_down {
    /// Nothing listens on port 1: every call fails at once and the breaker opens.
    async fn make() -> copilot_store::StoreSet {
        super::cached_store_set(Some("redis://127.0.0.1:1")).await
    }
    copilot_store::conformance_suite!(make);
}

mod redis_paused {
    /// A Redis that accepts connections and never answers (SIGSTOP, kept by the test script).
    async fn make() -> Option<copilot_store::StoreSet> {
        let url = super::redis_url("COPILOT_TEST_REDIS_PAUSED_URL");
        Some(super::cached_store_set(Some(&url)).await)
    }
    copilot_store::conformance_suite!(optional make);
}

/// One process on its SQLite file: L1 only, always trusted.
mod l1_only {
    async fn make() -> copilot_store::StoreSet {
        super::cached_over(
            copilot_store::StoreSet::from_backend(super::sqlite().await),
            None,
            false,
        )
    }
    copilot_store::conformance_suite!(make);
}

/// A PostgreSQL-only fleet member: L1 trusted through the change feed alone.
mod postgres_no_redis {
    async fn make() -> copilot_store::StoreSet {
        super::cached_postgres_store_set(None).await
    }
    copilot_store::conformance_suite!(make);
}

/// The cache tier over PostgreSQL too (issue "Tests that cannot pass by accident"): the
/// conformance suite through the decorators with Redis up, down and paused, the change-log
/// drainer running.
mod postgres_redis_up {
    async fn make() -> copilot_store::StoreSet {
        let url = super::redis_url("COPILOT_TEST_REDIS_URL");
        super::cached_postgres_store_set(Some(&url)).await
    }
    copilot_store::conformance_suite!(make);
}

mod postgres_redis_down {
    async fn make() -> copilot_store::StoreSet {
        super::cached_postgres_store_set(Some("redis://127.0.0.1:1")).await
    }
    copilot_store::conformance_suite!(make);
}

mod postgres_redis_paused {
    async fn make() -> copilot_store::StoreSet {
        let url = super::redis_url("COPILOT_TEST_REDIS_PAUSED_URL");
        super::cached_postgres_store_set(Some(&url)).await
    }
    copilot_store::conformance_suite!(make);
}
