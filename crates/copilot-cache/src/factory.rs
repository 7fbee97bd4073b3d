//! Chooses the caching decorators from configuration (DESIGN.md 5.4) and holds the run-time
//! kill switch that every instance follows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use copilot_store::{ChangeFeed, ChangeLog, ChangeSubject, StoreSet};
use serde::Serialize;

use crate::breaker::BreakerState;
use crate::bus::Bus;
use crate::events::{EventHub, HubSettings};
use crate::ratelimit::{RateLimitSettings, RateLimiterService};
use crate::redis_l2::{RedisL2, RedisSettings};
use crate::tier::{CacheTier, TierSettings};
use crate::trust::{L1Trust, Path};
use crate::{CachedConfigStore, CachedConversationStore, CachedMembershipStore, CachedPolicyStore};

/// The flags of DESIGN.md 5.4, as configured at start.
#[derive(Clone, Debug)]
pub struct CacheFlags {
    /// `ENABLE_REDIS_CACHING`: the global switch over all six.
    pub global: bool,
    pub policy: bool,
    pub config: bool,
    pub conversation: bool,
    pub auth: bool,
    pub rate_limiter: bool,
    pub events: bool,
}

impl Default for CacheFlags {
    fn default() -> Self {
        Self {
            global: true,
            policy: true,
            config: true,
            conversation: false,
            auth: true,
            rate_limiter: true,
            events: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// `None`: Redis is not configured (in-process caches only).
    pub redis: Option<RedisSettings>,
    pub flags: CacheFlags,
    pub prefix: String,
    pub policy_ttl: Duration,
    pub config_ttl: Duration,
    pub conversation_ttl: Duration,
    pub auth_ttl: Duration,
    /// How often the change log is drained, and how old a change must be before the drainer
    /// re-sends it (younger ones are their writer's business).
    pub drain_every: Duration,
    pub drain_settle: Duration,
    /// Lifetime of negative entries (at most 30 s for the auth cache).
    pub negative_ttl: Duration,
    /// L1: lifetime (at most 30 s) and bounds per cache.
    pub l1_ttl: Duration,
    pub l1_max_entries: usize,
    pub l1_max_bytes: u64,
    /// The longest a store call can take (store deadline plus pool wait): tombstones outlive
    /// it with margin, so no delayed reader can put an older row back after one expired.
    pub store_deadline: Duration,
    /// The event hub's replay window and buffers (the prefix is this one's).
    pub events: HubSettings,
    /// `None`: rate limiting turned off (`COPILOT_RATE_LIMIT=off`).
    pub rate_limit: Option<RateLimitSettings>,
    /// Other processes write the same store (PostgreSQL): L1 is trusted only while an
    /// invalidation path (the Redis bus, the store's change feed) is healthy. `false` for a
    /// store only this process writes (SQLite, memory): L1 is always right.
    pub shared_store: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            redis: None,
            flags: CacheFlags::default(),
            prefix: "copilot".into(),
            policy_ttl: Duration::from_secs(300),
            config_ttl: Duration::from_secs(300),
            conversation_ttl: Duration::from_secs(60),
            auth_ttl: Duration::from_secs(300),
            drain_every: Duration::from_secs(1),
            drain_settle: Duration::from_secs(2),
            negative_ttl: Duration::from_secs(30),
            l1_ttl: Duration::from_secs(30),
            l1_max_entries: 10_000,
            l1_max_bytes: 64 * 1024 * 1024,
            store_deadline: Duration::from_millis(5_500),
            events: HubSettings::default(),
            rate_limit: Some(RateLimitSettings::default()),
            shared_store: true,
        }
    }
}

impl CacheSettings {
    /// DESIGN.md 5.2.3: twice the longest store call, and never under a minute.
    pub fn tombstone_ttl(&self) -> Duration {
        (self.store_deadline * 2).max(Duration::from_secs(60))
    }

    /// What these settings turn on, one line per cache (start-up banner, `doctor`); needs no
    /// connection.
    pub fn describe(&self) -> Vec<String> {
        let flags = &self.flags;
        let redis = if self.redis.is_some() {
            "configured"
        } else {
            "not configured (REDIS_URL unset)"
        };
        let mut lines = vec![format!(
            "global switch ENABLE_REDIS_CACHING={}; Redis {redis}",
            flags.global
        )];
        for (name, flag, var) in [
            ("policy", flags.policy, "ENABLE_LLM_POLICY_CACHE"),
            ("config", flags.config, "ENABLE_CONVERSATION_CONFIG_CACHE"),
            (
                "conversation",
                flags.conversation,
                "ENABLE_CONVERSATION_CACHING",
            ),
            ("auth", flags.auth, "ENABLE_AUTH_VALIDATION_CACHE"),
        ] {
            let tiers = match (
                flags.global && flag,
                self.redis.is_some(),
                self.shared_store,
            ) {
                (false, _, _) => "off",
                (true, true, true) => {
                    "L1 (while the Redis bus or PostgreSQL notifications deliver invalidations) + Redis L2"
                }
                (true, true, false) => "L1 + Redis L2",
                (true, false, true) => "L1 (while PostgreSQL notifications deliver invalidations)",
                (true, false, false) => "in-process L1 only",
            };
            lines.push(format!("{name} cache: {tiers} ({var}={flag})"));
        }
        let shared = |flag: bool| flags.global && flag && self.redis.is_some();
        lines.push(match &self.rate_limit {
            None => "rate limiter: off (COPILOT_RATE_LIMIT=off)".to_owned(),
            Some(rl) if shared(flags.rate_limiter) => format!(
                "rate limiter: shared through Redis (GCRA, {} per {:?}, burst {}); in-process share 1/{} while Redis is unavailable (ENABLE_RATE_LIMITER_REDIS=true)",
                rl.limit, rl.period, rl.burst, rl.instances
            ),
            Some(rl) => format!(
                "rate limiter: in-process, 1/{} of {} per {:?}, burst {} (ENABLE_RATE_LIMITER_REDIS={}{})",
                rl.instances,
                rl.limit,
                rl.period,
                rl.burst,
                flags.rate_limiter,
                if self.redis.is_some() { "" } else { "; REDIS_URL unset" }
            ),
        });
        lines.push(if shared(flags.events) {
            format!(
                "event hubs: across instances through Redis pub/sub, replay from streams of {} events (ENABLE_REDIS_EVENT_HUBS=true)",
                self.events.replay_len
            )
        } else {
            format!(
                "event hubs: in-process (this instance's subscribers only), replay ring of {} events (ENABLE_REDIS_EVENT_HUBS={}{})",
                self.events.replay_len,
                flags.events,
                if self.redis.is_some() { "" } else { "; REDIS_URL unset" }
            )
        });
        lines
    }
}

/// `GET /v1/admin/cache`, one cache.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheReport {
    pub enabled: bool,
    pub hits: u64,
    pub misses: u64,
    pub hit_ratio: f64,
}

/// `GET /v1/admin/cache`.
#[derive(Clone, Debug, Serialize)]
pub struct CacheState {
    pub enabled: bool,
    /// `ok`, `degraded` or `disabled`.
    pub redis: &'static str,
    /// `closed`, `open` or `half-open`.
    pub breaker: &'static str,
    /// Where Redis is (`null` without Redis).
    pub topology: Option<crate::redis_connect::RedisTopology>,
    pub caches: std::collections::BTreeMap<&'static str, CacheReport>,
}

type Stats = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

/// The process's caches: their switch, their Redis and their counters.
pub struct CacheControl {
    switch: Arc<AtomicBool>,
    l2: Option<Arc<RedisL2>>,
    bus: Option<Arc<Bus>>,
    trust: Arc<L1Trust>,
    settings: CacheSettings,
    stats: Vec<(&'static str, Stats)>,
    events: EventHub,
    limiter: Option<Arc<RateLimiterService>>,
    /// This process among the fleet (the drain lease's holder).
    instance: String,
    drain_lease: redis::Script,
}

/// Takes or renews the lease `KEYS[1]` for `ARGV[1]` for `ARGV[2]` ms; 1 when held.
const DRAIN_LEASE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// What every tier of the process shares: Redis, the switch, the bus and the L1 trust.
struct Shared {
    l2: Option<Arc<RedisL2>>,
    switch: Arc<AtomicBool>,
    bus: Option<Arc<Bus>>,
    trust: Arc<L1Trust>,
}

impl Shared {
    fn tier<T>(&self, settings: TierSettings) -> CacheTier<T>
    where
        T: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        let tier = CacheTier::new(settings, self.l2.clone()).with_switch(self.switch.clone());
        match &self.bus {
            Some(bus) => tier.with_bus(bus.clone()),
            None => tier.with_trust(self.trust.clone()),
        }
    }
}

/// The drainer's store calls give up after this (they run in the background, not per request).
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

/// The Redis key that carries the global switch between instances.
fn switch_key(prefix: &str) -> String {
    format!("{prefix}:v1:global:cache-enabled")
}

impl CacheControl {
    /// Wraps `stores` with the caches the flags turn on.
    pub fn build(
        stores: StoreSet,
        settings: CacheSettings,
    ) -> Result<(StoreSet, Arc<CacheControl>), redis::RedisError> {
        let l2 = match &settings.redis {
            Some(redis) => Some(Arc::new(RedisL2::new(redis)?)),
            None => None,
        };
        let switch = Arc::new(AtomicBool::new(settings.flags.global));
        let trust = if settings.shared_store {
            L1Trust::shared()
        } else {
            L1Trust::single_process()
        };
        let bus = match &l2 {
            Some(l2) => {
                let bus = Bus::new(l2.clone(), &settings.prefix, trust.clone());
                bus.spawn();
                Some(bus)
            }
            _ => None,
        };
        if settings.shared_store
            && let Some(feed) = &stores.feed
        {
            crate::feed::spawn_listener(
                feed.clone(),
                Arc::downgrade(&trust),
                settings.prefix.clone(),
            );
        }
        if settings.shared_store && bus.is_none() && stores.feed.is_none() {
            tracing::warn!(
                "the store is shared but no invalidation path exists (no Redis, no change feed): L1 is bypassed"
            );
        }
        let shared = Shared {
            l2: l2.clone(),
            switch: switch.clone(),
            bus: bus.clone(),
            trust: trust.clone(),
        };
        let tier_settings = |name: &'static str, ttl: Duration| {
            let mut s = TierSettings::new(name, ttl);
            s.prefix = settings.prefix.clone();
            s.negative_ttl = settings.negative_ttl;
            s.tombstone_ttl = settings.tombstone_ttl();
            s.l1_ttl = settings.l1_ttl.min(Duration::from_secs(30));
            s.l1_capacity = settings.l1_max_entries;
            s.l1_max_bytes = settings.l1_max_bytes;
            s
        };
        let mut out = stores.clone();
        let mut stats: Vec<(&'static str, Stats)> = Vec::new();
        let flags = &settings.flags;
        if flags.policy {
            let tier = shared.tier(tier_settings("policy", settings.policy_ttl));
            let cached = Arc::new(CachedPolicyStore::new(stores.policies.clone(), tier));
            let c = cached.clone();
            stats.push(("policy", Arc::new(move || c.tier().stats())));
            out.policies = cached;
        }
        if flags.config {
            let tier = shared.tier(tier_settings("config", settings.config_ttl));
            let cached = Arc::new(CachedConfigStore::new(stores.configs.clone(), tier));
            let c = cached.clone();
            stats.push(("config", Arc::new(move || c.tier().stats())));
            out.configs = cached;
        }
        if flags.conversation {
            let tier = shared.tier(tier_settings("conversation", settings.conversation_ttl));
            let cached = Arc::new(CachedConversationStore::new(
                stores.conversations.clone(),
                tier,
            ));
            let c = cached.clone();
            stats.push(("conversation", Arc::new(move || c.tier().stats())));
            out.conversations = cached;
        }
        if flags.auth {
            let mut s = tier_settings("auth", settings.auth_ttl);
            s.negative_ttl = s.negative_ttl.min(Duration::from_secs(30));
            let tier = shared.tier(s);
            let cached = Arc::new(CachedMembershipStore::new(stores.members.clone(), tier));
            let c = cached.clone();
            stats.push(("auth", Arc::new(move || c.tier().stats())));
            out.members = cached;
        }
        let events = Self::build_events(&settings, &l2, &switch);
        let limiter = settings.rate_limit.clone().map(|mut rl| {
            rl.prefix = settings.prefix.clone();
            let (switch, flag) = (switch.clone(), settings.flags.rate_limiter);
            RateLimiterService::new(
                rl,
                l2.clone(),
                Box::new(move || flag && switch.load(Ordering::Relaxed)),
            )
        });
        let control = Arc::new(Self {
            switch,
            l2,
            bus,
            trust,
            settings,
            stats,
            events,
            limiter,
            instance: format!("{}-{}", std::process::id(), crate::bus::rand_suffix()),
            drain_lease: redis::Script::new(DRAIN_LEASE),
        });
        control.drain(stores.changes.clone(), stores.feed.clone());
        Ok((out, control))
    }

    fn build_events(
        settings: &CacheSettings,
        l2: &Option<Arc<RedisL2>>,
        switch: &Arc<AtomicBool>,
    ) -> EventHub {
        let mut hub_settings = settings.events.clone();
        hub_settings.prefix = settings.prefix.clone();
        match l2 {
            Some(l2) => {
                let (switch, flag) = (switch.clone(), settings.flags.events);
                EventHub::with_redis(
                    hub_settings,
                    l2.clone(),
                    Box::new(move || flag && switch.load(Ordering::Relaxed)),
                )
            }
            None => EventHub::local(hub_settings),
        }
    }

    /// The event hub (DESIGN.md 6.3).
    pub fn events(&self) -> &EventHub {
        &self.events
    }

    /// The rate limiter; `None` when turned off.
    pub fn rate_limiter(&self) -> Option<&Arc<RateLimiterService>> {
        self.limiter.as_ref()
    }

    /// Re-sends, every `drain_every`, the invalidations of recorded changes older than
    /// `drain_settle`, then forgets them: through Redis (tombstone and bus), or the store's
    /// change feed where Redis is absent or did not take it. Both are version-guarded, so a change sent twice does no harm; one whose
    /// writer died before Redis or the feed took it is sent now (DESIGN.md 5.3). Changes stay
    /// recorded while Redis is unavailable.
    fn drain(self: &Arc<Self>, changes: Arc<dyn ChangeLog>, feed: Option<Arc<dyn ChangeFeed>>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(control) = me.upgrade() else { return };
                let every = control.settings.drain_every;
                if !control.hold_drain_lease().await {
                    drop(control);
                    tokio::time::sleep(every).await;
                    continue;
                }
                let before = chrono::Utc::now()
                    - chrono::Duration::from_std(control.settings.drain_settle).unwrap_or_default();
                if let Ok(Ok(batch)) =
                    tokio::time::timeout(DRAIN_DEADLINE, changes.changes_before(before, 500)).await
                {
                    let mut done = Vec::with_capacity(batch.len());
                    for change in &batch {
                        let via_redis = control.resend(&change.subject, change.version).await;
                        // The feed only where the bus did not carry it (no Redis, or Redis did
                        // not take it): every change is drained, so announcing each one again
                        // beside a working bus would double PostgreSQL's notifications.
                        if let Some(feed) =
                            feed.as_ref().filter(|_| control.l2.is_none() || !via_redis)
                        {
                            let _ = tokio::time::timeout(
                                DRAIN_DEADLINE,
                                feed.announce(&change.subject, change.version),
                            )
                            .await;
                        }
                        if !via_redis {
                            break;
                        }
                        done.push(change.id);
                    }
                    if !done.is_empty()
                        && matches!(
                            tokio::time::timeout(DRAIN_DEADLINE, changes.forget_changes(&done))
                                .await,
                            Ok(Ok(()))
                        )
                    {
                        metrics::counter!("copilot_cache_changes_drained_total")
                            .increment(done.len() as u64);
                    }
                }
                drop(control);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// One instance of the fleet drains the change log at a time (so the work does not grow with
    /// the fleet): it holds a lease in Redis, renewed every pass, taken over by another
    /// instance within a few passes when it stops. Without Redis every instance drains (a change
    /// re-announced twice does no harm).
    async fn hold_drain_lease(&self) -> bool {
        let Some(l2) = &self.l2 else { return true };
        let ttl = (self.settings.drain_every * 5).max(Duration::from_secs(1));
        let key = format!("{}:v1:global:change-drainer", self.settings.prefix);
        l2.script::<i64>(
            "drain_lease",
            &self.drain_lease,
            &[&key],
            &[self.instance.clone(), ttl.as_millis().to_string()],
        )
        .await
            == Some(1)
    }

    /// Tombstone and bus message for one recorded change; `false` if Redis did not take them.
    async fn resend(&self, subject: &ChangeSubject, version: u64) -> bool {
        let Some(l2) = &self.l2 else { return true };
        let (cache, key) = crate::keys::for_change(&self.settings.prefix, subject);
        if l2
            .tombstone(&key, version, self.settings.tombstone_ttl())
            .await
            .is_none()
        {
            return false;
        }
        match &self.bus {
            Some(bus) => bus.publish(cache, &key, version).await,
            None => true,
        }
    }

    pub fn enabled(&self) -> bool {
        self.switch.load(Ordering::Relaxed)
    }

    /// Flips the global switch fleet-wide. Precedence: `ENABLE_REDIS_CACHING=false` keeps this
    /// instance's caches off whatever the fleet says; otherwise the fleet's run-time switch
    /// decides while it is off (`"0"` in Redis), and turning it on removes that override, so
    /// instances then follow their own configuration again (a new instance never inherits a
    /// forgotten "on"). Returns `false`, changing nothing, when Redis is configured but did not
    /// take the change: the switch is not fleet-wide then, and the caller must say so.
    pub async fn set_enabled(&self, enabled: bool) -> bool {
        if let Some(l2) = &self.l2 {
            let key = switch_key(&self.settings.prefix);
            let mut cmd = if enabled {
                redis::cmd("DEL")
            } else {
                redis::cmd("SET")
            };
            cmd.arg(&key);
            if !enabled {
                cmd.arg("0");
            }
            if l2.query::<redis::Value>("switch", cmd).await.is_none() {
                return false;
            }
        }
        self.switch
            .store(enabled && self.settings.flags.global, Ordering::Relaxed);
        true
    }

    /// Reads the fleet's switch now and then every `every` (a new instance follows the fleet at
    /// start; a flip elsewhere reaches this instance within `every`). An unanswered read keeps
    /// the current state.
    pub fn follow_switch(self: &Arc<Self>, every: Duration) {
        let Some(l2) = self.l2.clone() else { return };
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(control) = me.upgrade() else { return };
                let configured = control.settings.flags.global;
                match l2.get(&switch_key(&control.settings.prefix)).await {
                    Some(Some(value)) if value == "0" => {
                        control.switch.store(false, Ordering::Relaxed)
                    }
                    Some(_) => control.switch.store(configured, Ordering::Relaxed),
                    None => {}
                }
                drop(control);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// `ok` (breaker closed and bus healthy), `degraded` or `disabled`.
    pub fn redis_status(&self) -> &'static str {
        match &self.l2 {
            None => "disabled",
            Some(l2) if l2.breaker_state() == BreakerState::Closed && self.bus_healthy() => "ok",
            Some(_) => "degraded",
        }
    }

    pub fn bus_healthy(&self) -> bool {
        self.bus.as_ref().is_some_and(|b| b.is_healthy())
    }

    /// Whether L1 answers now (a store only this process writes, or a healthy invalidation
    /// path), and which paths are healthy.
    pub fn l1_trust(&self) -> (bool, Vec<&'static str>) {
        let paths = [(Path::Redis, "redis"), (Path::Postgres, "postgres")]
            .into_iter()
            .filter(|(p, _)| self.trust.path_healthy(*p))
            .map(|(_, name)| name)
            .collect();
        (self.trust.is_trusted(), paths)
    }

    pub fn state(&self) -> CacheState {
        let flags = &self.settings.flags;
        let mut caches = std::collections::BTreeMap::new();
        for (name, flag) in [
            ("policy", flags.policy),
            ("config", flags.config),
            ("conversation", flags.conversation),
            ("auth", flags.auth),
            ("rateLimiter", flags.rate_limiter),
            ("events", flags.events),
        ] {
            // The limiter: decisions through Redis (hits) and in-process (misses); the hub:
            // events delivered (hits) and subscribers dropped for falling behind (misses).
            let (built, (hits, misses)) = match name {
                "rateLimiter" => (
                    self.limiter.is_some() && self.l2.is_some(),
                    self.limiter.as_ref().map_or((0, 0), |l| l.stats()),
                ),
                "events" => (self.l2.is_some(), self.events.stats()),
                _ => (
                    self.stats.iter().any(|(n, _)| *n == name),
                    self.stats
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or((0, 0), |(_, s)| s()),
                ),
            };
            let total = hits + misses;
            caches.insert(
                name,
                CacheReport {
                    // Caches: on when the flags say so (L1 alone without Redis). The limiter and
                    // the hub: on when they go through Redis (else they run in-process).
                    enabled: built && self.enabled() && flag,
                    hits,
                    misses,
                    hit_ratio: if total == 0 {
                        0.0
                    } else {
                        hits as f64 / total as f64
                    },
                },
            );
        }
        CacheState {
            enabled: self.enabled(),
            redis: self.redis_status(),
            breaker: self
                .l2
                .as_ref()
                .map_or(BreakerState::Closed, |l2| l2.breaker_state())
                .as_str(),
            topology: self.l2.as_ref().map(|l2| l2.topology()),
            caches,
        }
    }

    /// One line per cache, for the start-up banner.
    pub fn describe(&self) -> Vec<String> {
        self.settings.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN.md 5.2.3: a tombstone outlives the longest store read, whatever the deadlines.
    #[test]
    fn tombstones_outlive_the_store_deadline() {
        let mut settings = CacheSettings::default();
        assert_eq!(settings.tombstone_ttl(), Duration::from_secs(60));
        settings.store_deadline = Duration::from_secs(120);
        assert!(settings.tombstone_ttl() >= Duration::from_secs(240));
    }
}
