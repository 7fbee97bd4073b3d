//! When L1 may be trusted (DESIGN.md 5.1). L1 can miss another instance's write only if no
//! invalidation path delivers it; there are two, independent of each other: the Redis bus
//! ([`crate::bus`]) and the store's own change feed (PostgreSQL `LISTEN/NOTIFY`,
//! [`crate::feed`]). L1 is trusted while either is healthy, so a Redis outage costs only L2,
//! and a PostgreSQL-only fleet keeps a fresh L1 too. A store that only this process writes
//! (SQLite, memory) needs no path: its L1 is always right.
//!
//! When trust is lost, or regained, L1 is flushed (the rule of Redis client-side caching). Every
//! change of a path's health starts a new epoch: a fill whose read began in another epoch may
//! carry a row whose invalidation fell between the paths, and is kept out of L1.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the invalidation paths do to one cache's L1.
pub trait L1Sink: Send + Sync {
    fn cache_name(&self) -> &'static str;
    /// A write elsewhere (or here) produced `version` for `key`.
    fn invalidate_l1(&self, key: &str, version: u64);
    /// Trust was lost (or regained): nothing in L1 can be relied on.
    fn flush_l1(&self);
}

/// An invalidation path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Redis pub/sub.
    Redis,
    /// PostgreSQL `LISTEN/NOTIFY`.
    Postgres,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

pub struct L1Trust {
    /// One process writes the store: L1 is always right.
    always: bool,
    redis: AtomicBool,
    postgres: AtomicBool,
    epoch: AtomicU64,
    sinks: Mutex<Vec<Arc<dyn L1Sink>>>,
    /// Serializes health changes, so a flush and the epoch it belongs to are never interleaved
    /// with another change.
    changing: Mutex<()>,
}

impl L1Trust {
    /// For a store only this process writes (SQLite, memory): always trusted.
    pub fn single_process() -> Arc<Self> {
        Arc::new(Self::new(true))
    }

    /// For a store other processes write too: trusted while a path is healthy.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new(false))
    }

    fn new(always: bool) -> Self {
        Self {
            always,
            redis: AtomicBool::new(false),
            postgres: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            sinks: Mutex::new(Vec::new()),
            changing: Mutex::new(()),
        }
    }

    pub fn register(&self, sink: Arc<dyn L1Sink>) {
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }

    /// Whether L1 may answer now.
    pub fn is_trusted(&self) -> bool {
        self.always || self.redis.load(Ordering::Relaxed) || self.postgres.load(Ordering::Relaxed)
    }

    /// Whether `path` delivers invalidations now.
    pub fn path_healthy(&self, path: Path) -> bool {
        self.flag(path).load(Ordering::Relaxed)
    }

    /// Captured when a read starts, compared when it fills.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn flag(&self, path: Path) -> &AtomicBool {
        match path {
            Path::Redis => &self.redis,
            Path::Postgres => &self.postgres,
        }
    }

    /// A path became healthy or lost its footing.
    pub fn set_path(&self, path: Path, healthy: bool) {
        let _changing = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let trusted_before = self.is_trusted();
        if self.flag(path).swap(healthy, Ordering::AcqRel) == healthy {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("copilot_cache_invalidation_path_healthy", "path" => path.label())
            .set(if healthy { 1.0 } else { 0.0 });
        let trusted = self.is_trusted();
        if trusted != trusted_before {
            // Either way, whatever L1 holds was kept under other conditions: drop it.
            for sink in self.sinks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                sink.flush_l1();
            }
            metrics::gauge!("copilot_cache_l1_trusted").set(if trusted { 1.0 } else { 0.0 });
        }
        match (healthy, trusted) {
            (true, _) => tracing::info!(path = path.label(), "invalidation path healthy"),
            (false, true) => tracing::warn!(
                path = path.label(),
                "invalidation path unhealthy; L1 stays in use through the other path"
            ),
            (false, false) => tracing::warn!(
                path = path.label(),
                "invalidation path unhealthy and no other: L1 flushed and bypassed"
            ),
        }
    }

    /// An invalidation heard on a path, for every L1 of cache `cache`.
    pub fn deliver(&self, cache: &str, key: &str, version: u64) {
        for sink in self.sinks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if sink.cache_name() == cache {
                sink.invalidate_l1(key, version);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Flushes(std::sync::atomic::AtomicUsize);

    impl L1Sink for Flushes {
        fn cache_name(&self) -> &'static str {
            "test"
        }
        fn invalidate_l1(&self, _: &str, _: u64) {}
        fn flush_l1(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn trusted_while_either_path_is_healthy_and_flushed_only_when_trust_changes() {
        let trust = L1Trust::shared();
        let flushes = Arc::new(Flushes::default());
        trust.register(flushes.clone());
        assert!(!trust.is_trusted(), "no path yet");
        let flushed = || flushes.0.load(Ordering::Relaxed);

        trust.set_path(Path::Postgres, true);
        assert!(trust.is_trusted());
        assert_eq!(
            flushed(),
            1,
            "gaining trust flushes what was kept without it"
        );
        let epoch = trust.epoch();

        trust.set_path(Path::Redis, true);
        trust.set_path(Path::Redis, false);
        assert!(trust.is_trusted(), "Redis lost: PostgreSQL still delivers");
        assert_eq!(flushed(), 1, "no flush while one path stays healthy");
        assert_eq!(trust.epoch(), epoch + 2, "but every change starts an epoch");

        trust.set_path(Path::Postgres, false);
        assert!(!trust.is_trusted());
        assert_eq!(flushed(), 2);
        trust.set_path(Path::Postgres, false);
        assert_eq!(trust.epoch(), epoch + 3, "a repeated state changes nothing");

        assert!(L1Trust::single_process().is_trusted());
    }
}
