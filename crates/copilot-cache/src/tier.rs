//! One cached kind of row: L1 (in process) + L2 (Redis) + single flight, with the versioned
//! fill/tombstone protocol of DESIGN.md 5.2. A decorator says only what its keys and rows are.
//!
//! L1 is trusted only where it cannot miss another instance's write ([`L1Trust`]: a store only
//! this process writes, or while an invalidation path is healthy). Otherwise reads go to L2,
//! then the store.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use copilot_store::{StoreError, StoreResult};
use quick_cache::sync::Cache;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

mod fill;
mod invalidation;
mod l1;
mod read;

use self::l1::{L1, SlotWeight};
use crate::bus::Bus;
use crate::counting::{HitCounter, ShardedCounter};
use crate::entry::Entry;
use crate::redis_l2::RedisL2;
use crate::trust::L1Trust;

/// The longest a write waits for its cache work (tombstone, bus message, fill) after the
/// store committed; the work itself goes on. Callers that put a deadline on a decorated store
/// call add this to the store's own deadline, so a committed write is never reported failed
/// because Redis was slow.
pub const AFTER_COMMIT_WAIT: Duration = Duration::from_millis(250);

/// A test hook run between a miss's store read and its cache fill (to widen the race window).
pub type FillHook = Arc<dyn Fn(&str) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Clone, Debug)]
pub struct TierSettings {
    /// The cache's name in metrics (`policy`, `config`, ...).
    pub name: &'static str,
    /// `{prefix}` of every key.
    pub prefix: String,
    /// L2 lifetime of a row (the safety net, e.g. `POLICY_CACHE_TTL_SECONDS`).
    pub ttl: Duration,
    /// Lifetime of a negative ("no row") entry.
    pub negative_ttl: Duration,
    /// Lifetime of a tombstone: longer than any store read can take.
    pub tombstone_ttl: Duration,
    /// L1 lifetime (at most 30 s).
    pub l1_ttl: Duration,
    /// L1 bounds: entries and (approximate, JSON-encoded) bytes.
    pub l1_capacity: usize,
    pub l1_max_bytes: u64,
}

impl TierSettings {
    pub fn new(name: &'static str, ttl: Duration) -> Self {
        Self {
            name,
            prefix: "copilot".into(),
            ttl,
            negative_ttl: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(60),
            l1_ttl: Duration::from_secs(30),
            l1_capacity: 10_000,
            l1_max_bytes: 64 * 1024 * 1024,
        }
    }
}

pub struct CacheTier<T> {
    settings: TierSettings,
    l2: Option<Arc<RedisL2>>,
    l1: Arc<L1<T>>,
    /// Carries this tier's invalidations to every instance's L1.
    bus: Option<Arc<Bus>>,
    /// Whether L1 may answer, and the epoch fills are checked against.
    trust: Arc<L1Trust>,
    /// Single flight: concurrent misses of one key share one store read while it runs. The
    /// leader leaves its result for those who waited and retires the flight; a write removes
    /// the key's flight, so a read that starts after a write never joins a flight that read
    /// before it.
    flights: Mutex<HashMap<String, Flight<T>>>,
    /// Tombstones that could not reach Redis yet (key -> version): L2 is not trusted for these
    /// keys until a newer fill or the tombstone lands.
    pending: Arc<Mutex<HashMap<String, u64>>>,
    /// Whether the retry task runs.
    retrying: Arc<AtomicBool>,
    fill_hook: Mutex<Option<FillHook>>,
    /// The global kill switch (shared by every tier of the process).
    enabled: Arc<AtomicBool>,
    /// L1 and L2 hits: sharded, as every request's thread adds to it.
    hits: ShardedCounter,
    misses: AtomicU64,
    /// Registered once: a hit costs an atomic increment, not a registry lookup.
    counters: Counters,
}

struct Counters {
    /// The hit path's counter: sharded, published to Prometheus by `counting::publish`.
    l1_hit: Arc<HitCounter>,
    l1_miss: metrics::Counter,
    l2_hit: metrics::Counter,
    l2_miss: metrics::Counter,
    l2_unavailable: metrics::Counter,
    store_read: metrics::Counter,
    bypass: metrics::Counter,
    l1_stale: metrics::Counter,
}

impl Counters {
    /// `copilot_cache_requests_total{cache, tier, outcome}`. Register after the recorder is
    /// installed (handles taken earlier count nothing).
    fn new(cache: &'static str) -> Self {
        let c = |tier: &'static str, outcome: &'static str| metrics::counter!("copilot_cache_requests_total", "cache" => cache, "tier" => tier, "outcome" => outcome);
        Self {
            l1_hit: HitCounter::new(c("l1", "hit")),
            l1_miss: c("l1", "miss"),
            l2_hit: c("l2", "hit"),
            l2_miss: c("l2", "miss"),
            l2_unavailable: c("l2", "unavailable"),
            store_read: c("store", "read"),
            bypass: c("store", "bypass"),
            l1_stale: c("l1", "stale"),
        }
    }
}

type Flight<T> = Arc<tokio::sync::Mutex<Option<Option<Arc<T>>>>>;

enum Lookup<T> {
    Hit(Option<Arc<T>>),
    Miss,
}

impl<T> CacheTier<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    pub fn new(settings: TierSettings, l2: Option<Arc<RedisL2>>) -> Self {
        let capacity = settings.l1_capacity.max(16);
        let name = settings.name;
        // Without Redis or a feed nothing else invalidates: right for one process only (the
        // factory says which); with Redis, trusted once a path joins.
        let trust = if l2.is_none() {
            L1Trust::single_process()
        } else {
            L1Trust::shared()
        };
        Self {
            l1: Arc::new(L1 {
                name: settings.name,
                cache: Cache::with_weighter(
                    capacity,
                    settings.l1_max_bytes.max(1024),
                    SlotWeight {
                        floor: settings.l1_max_bytes.max(1024) / capacity as u64,
                    },
                ),
                write: Mutex::new(()),
                ttl: settings.l1_ttl.min(Duration::from_secs(30)),
                generation: AtomicU64::new(0),
            }),
            settings,
            l2,
            bus: None,
            trust,
            flights: Mutex::new(HashMap::new()),
            pending: Arc::new(Mutex::new(HashMap::new())),
            retrying: Arc::new(AtomicBool::new(false)),
            fill_hook: Mutex::new(None),
            enabled: Arc::new(AtomicBool::new(true)),
            hits: ShardedCounter::default(),
            misses: AtomicU64::new(0),
            counters: Counters::new(name),
        }
    }

    /// Shares the process's global kill switch: while it is off, reads go straight to the store
    /// and nothing is filled; writes still send their tombstones, so nothing stale is left
    /// behind for when it is switched on again.
    pub fn with_switch(mut self, enabled: Arc<AtomicBool>) -> Self {
        self.enabled = enabled;
        self
    }

    /// Joins the invalidation bus: this tier's invalidations reach every instance, and L1 is
    /// trusted as the bus's [`L1Trust`] says.
    pub fn with_bus(self, bus: Arc<Bus>) -> Self {
        let mut tier = self.with_trust(bus.trust().clone());
        tier.bus = Some(bus);
        tier
    }

    /// Follows `trust`: L1 is used while it says so, and its paths' invalidations reach L1.
    pub fn with_trust(mut self, trust: Arc<L1Trust>) -> Self {
        trust.register(self.l1.clone());
        self.trust = trust;
        self
    }

    /// Hits (L1 or L2) and misses (store reads) since start.
    pub fn stats(&self) -> (u64, u64) {
        (self.hits.sum(), self.misses.load(Ordering::Relaxed))
    }

    fn is_on(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn settings(&self) -> &TierSettings {
        &self.settings
    }

    /// Installs a hook that runs between a miss's store read and its fill (tests only).
    pub fn set_fill_hook(&self, hook: Option<FillHook>) {
        *self.fill_hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    fn l1_trusted(&self) -> bool {
        self.trust.is_trusted()
    }

    /// L1's generation while L1 may answer (`None`: switched off or not trusted). A result
    /// computed from L1 entries read after taking generation `g` is as fresh as L1 itself while
    /// the generation is still `g` and none of those entries has expired.
    pub fn l1_generation(&self) -> Option<u64> {
        (self.is_on() && self.l1_trusted()).then(|| self.l1.generation.load(Ordering::Acquire))
    }

    /// What `key`'s live L1 entry answers: the version of its row (`None`: no row) and until
    /// when. `None` when L1 holds no answer for it (nothing, or a tombstone).
    pub fn l1_answer(&self, key: &str, now: Instant) -> Option<(Option<u64>, Instant)> {
        self.l1.answer_at(key, now)
    }

    /// Counts `n` L1 hits answered from a result derived from L1 (the memoized effective config).
    pub fn count_l1_hits(&self, n: u64) {
        self.counters.l1_hit.increment(n);
        self.hits.add(n);
    }

    fn count(&self, tier: &'static str, outcome: &'static str) {
        let counter = match (tier, outcome) {
            ("l1", "miss") => &self.counters.l1_miss,
            ("l2", "hit") => &self.counters.l2_hit,
            ("l2", "miss") => &self.counters.l2_miss,
            ("l2", "unavailable") => &self.counters.l2_unavailable,
            ("store", "read") => &self.counters.store_read,
            ("l1", "stale") => &self.counters.l1_stale,
            _ => &self.counters.bypass,
        };
        counter.increment(1);
    }

    fn is_pending(&self, key: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    fn l1_lookup(&self, key: &str) -> Lookup<T> {
        self.l1_lookup_at(key, Instant::now())
    }

    fn l1_lookup_at(&self, key: &str, now: Instant) -> Lookup<T> {
        if !self.l1_trusted() {
            return Lookup::Miss;
        }
        match self.l1.get_at(key, now).and_then(Entry::answer) {
            Some(answer) => {
                // The sharded hit counter, not `count`: this runs on every request's thread.
                self.counters.l1_hit.increment(1);
                Lookup::Hit(answer)
            }
            None => {
                self.count("l1", "miss");
                Lookup::Miss
            }
        }
    }

    /// Stores in L1 unless that would lower the key's version.
    fn l1_store(&self, key: &str, entry: Entry<T>) {
        self.l1.store(key, entry);
    }

    /// The trust epoch: captured when a read starts, compared when it fills.
    fn trust_epoch(&self) -> u64 {
        self.trust.epoch()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::redis_l2::RedisSettings;

    /// A tier whose Redis never answers: L1 is distrusted and L2 unavailable, so every read
    /// goes to the store (the situation where a shared flight result would never expire).
    fn tier_without_working_redis() -> CacheTier<String> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let l2 = RedisL2::new(&RedisSettings::new(format!("redis://127.0.0.1:{port}")))
            .expect("redis url");
        CacheTier::new(
            TierSettings::new("test", Duration::from_secs(60)),
            Some(Arc::new(l2)),
        )
    }

    /// Soak finding (issue "Speed"): a "no row" entry lives 30 s, so during a 5 s PostgreSQL
    /// restart some reads found theirs expired and failed with 503. With the store unavailable,
    /// what trusted L1 last held answers, up to the row TTL; an invalidated key does not, nor
    /// does any other store error, nor an entry older than the row TTL.
    #[tokio::test(start_paused = true)]
    async fn a_store_outage_is_answered_from_what_trusted_l1_last_held() {
        let tier = Arc::new(CacheTier::<String>::new(
            TierSettings::new("test", Duration::from_secs(300)),
            None,
        ));
        tier.get("row", || async { Ok(Some((1, "v1".to_owned()))) })
            .await
            .unwrap();
        tier.get("none", || async { Ok(None) }).await.unwrap();
        tier.get("gone", || async { Ok(Some((1, "old".to_owned()))) })
            .await
            .unwrap();
        tier.invalidate("gone", 2).await;
        tokio::time::advance(Duration::from_secs(31)).await;
        let unavailable = || async { Err(StoreError::Unavailable("restarting".into())) };
        assert_eq!(
            tier.get("row", unavailable).await.unwrap().as_deref(),
            Some(&"v1".to_owned())
        );
        assert_eq!(tier.get("none", unavailable).await.unwrap(), None);
        assert!(
            tier.get("gone", unavailable).await.is_err(),
            "an invalidated key holds no answer"
        );
        let broken = || async { Err(StoreError::Internal("corrupt row".into())) };
        assert!(
            tier.get("row", broken).await.is_err(),
            "only an outage is bridged"
        );
        tokio::time::advance(Duration::from_secs(270)).await;
        assert!(
            tier.get("row", unavailable).await.is_err(),
            "never past the row TTL"
        );
    }

    /// Issue "Hardening" item 3: a fill that began before the bus went down and landed after
    /// it came back could carry a value whose invalidation was lost; it stays out of L1.
    #[tokio::test]
    async fn a_fill_from_an_older_bus_epoch_stays_out_of_l1() {
        let l2 =
            Arc::new(RedisL2::new(&RedisSettings::new("redis://127.0.0.1:9")).expect("redis url"));
        let bus = Bus::new(l2.clone(), "test", L1Trust::shared());
        bus.force_health(true);
        let tier =
            CacheTier::<String>::new(TierSettings::new("test", Duration::from_secs(60)), Some(l2))
                .with_bus(bus.clone());
        let flapping = bus.clone();
        tier.set_fill_hook(Some(Arc::new(move |_| {
            // The bus goes down and comes back while this read is between store and fill.
            flapping.force_health(false);
            flapping.force_health(true);
            Box::pin(async {})
        })));
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok(Some((1, "v1".to_owned())))
        };
        tier.get("k", load).await.unwrap();
        tier.set_fill_hook(None);
        tier.get("k", load).await.unwrap();
        assert_eq!(
            loads.load(Ordering::SeqCst),
            2,
            "the old-epoch fill was not kept in L1"
        );
        // A fill within one epoch is kept.
        tier.get("k", load).await.unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 2);
    }

    /// Issue "Hardening" item 2: readers that came after a flight finished got its result; with
    /// a reader still holding the flight, the next read never reached the store again.
    #[tokio::test]
    async fn a_finished_load_is_never_handed_out_again() {
        let tier = tier_without_working_redis();
        let loads = AtomicUsize::new(0);
        let load = |value: &'static str| {
            let loads = &loads;
            move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok(Some((1, value.to_owned())))
            }
        };
        // Someone still holds the flight when the load finishes (a waiter being scheduled).
        let held = tier.flight("k");
        let first = tier.get("k", load("old")).await.unwrap();
        assert_eq!(first.as_deref().map(String::as_str), Some("old"));
        let second = tier.get("k", load("new")).await.unwrap();
        assert_eq!(
            second.as_deref().map(String::as_str),
            Some("new"),
            "a later read reached the store"
        );
        assert_eq!(loads.load(Ordering::SeqCst), 2);
        drop(held);
    }
}
