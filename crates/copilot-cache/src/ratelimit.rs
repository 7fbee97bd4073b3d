//! Rate limiting (DESIGN.md 6.5): GCRA, exact across the fleet in one atomic Redis script, with
//! an in-process limiter (`governor`) whenever Redis is not in use (not configured, flag or
//! global switch off, breaker open, call failed): each instance then allows its share, never
//! "no limit at all" (DESIGN.md 9, item 11).
//!
//! A decision must not cost a Redis round trip per request: an instance takes tokens from the
//! shared GCRA state in small leases (1, doubling while they are used up quickly, at most a
//! quarter of the burst) and spends them locally for at most `lease_ttl`. Every admitted request
//! was paid for in Redis, so the fleet never admits more than the limit; unused leased tokens
//! lapse (an instance may under-admit by one lease, never over-admit). A key that Redis refused
//! is refused locally until its retry time, without asking again.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use quick_cache::sync::Cache;
use redis::Script;
use tokio::time::Instant;

use crate::redis_l2::RedisL2;

/// GCRA, taking up to `ARGV[3]` tokens at once. Time is Redis' own (`TIME`), so every instance
/// measures against one clock. Returns `{granted, remaining, retry_after_us, reset_us}`.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local available = math.floor((now + tolerance - tat) / interval)
local granted = math.min(want, available)
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
local remaining = math.max(0, math.floor((now + tolerance - tat) / interval))
local retry = 0
if granted == 0 then retry = tat + interval - tolerance - now end
return {granted, remaining, retry, tat - now}
";

#[derive(Clone, Debug)]
pub struct RateLimitSettings {
    /// Requests per `period` (`COPILOT_RATE_LIMIT`, e.g. `600/min`).
    pub limit: u32,
    pub period: Duration,
    /// Requests allowed at once (`COPILOT_RATE_LIMIT_BURST`).
    pub burst: u32,
    /// In-process fallback: this instance allows `1/instances` of the limit and burst.
    pub instances: u32,
    /// Longest a leased token may wait to be spent.
    pub lease_ttl: Duration,
    /// Keys whose lease or in-process state is kept (least recently used go first).
    pub max_keys: usize,
    pub prefix: String,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            limit: 600,
            period: Duration::from_secs(60),
            burst: 60,
            instances: 1,
            lease_ttl: Duration::from_millis(250),
            max_keys: 100_000,
            prefix: "copilot".into(),
        }
    }
}

impl RateLimitSettings {
    /// The emission interval `T` of GCRA.
    fn interval(&self) -> Duration {
        self.period / self.limit.max(1)
    }

    fn max_lease(&self) -> u32 {
        (self.burst / 4).clamp(1, 256)
    }
}

/// Whom a request is counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// A verified principal: `tenant:user`, or `tenant:service` for a service acting in a tenant
    /// (`global` on paths without one).
    Principal { tenant: String, subject: String },
    /// Unauthenticated traffic: the client address (the socket peer, or from
    /// `X-Forwarded-For` when the peer is a trusted proxy).
    Peer(IpAddr),
}

impl RateKey {
    fn local(&self) -> String {
        match self {
            RateKey::Principal { tenant, subject } => format!("{tenant}:{subject}"),
            RateKey::Peer(ip) => format!("peer:{ip}"),
        }
    }

    /// The Redis key, in the tenant's hash tag.
    fn redis(&self, prefix: &str) -> String {
        match self {
            RateKey::Principal { tenant, subject } => {
                crate::keys::tenant_key(prefix, tenant, &format!("rl:{subject}"))
            }
            RateKey::Peer(ip) => crate::keys::tenant_key(prefix, &format!("peer:{ip}"), "rl"),
        }
    }
}

/// One decision and what the `RateLimit-*` headers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Until the key is back to its full burst.
    pub reset: Duration,
    /// Denied: when to try again.
    pub retry_after: Duration,
}

/// One key's lease. The hot path (spend a leased token, or refuse until the retry time) is a
/// few atomic operations; only a refill takes the lock, and the others wait for it.
#[derive(Debug, Default)]
struct Lease {
    /// Leased tokens left (may go below zero while racing a refill; then it is empty).
    tokens: AtomicI64,
    /// Microseconds since the limiter's epoch: tokens are spendable until then.
    expires_us: AtomicU64,
    /// Refused until then (microseconds since the epoch; 0: not refused).
    denied_until_us: AtomicU64,
    /// The shared budget left at the last refill, and when the key is full again.
    remaining: AtomicU32,
    reset_at_us: AtomicU64,
    refill: tokio::sync::Mutex<Refill>,
}

#[derive(Debug)]
struct Refill {
    /// Tokens to ask for next time.
    want: u32,
    last_us: Option<u64>,
}

impl Default for Refill {
    fn default() -> Self {
        Self {
            want: 1,
            last_us: None,
        }
    }
}

type LocalLimiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct RateLimiterService {
    settings: RateLimitSettings,
    l2: Option<Arc<RedisL2>>,
    /// Whether Redis should be used now (`ENABLE_RATE_LIMITER_REDIS` and the global switch).
    wanted: Box<dyn Fn() -> bool + Send + Sync>,
    leases: Cache<String, Arc<Lease>>,
    /// Lease times are microseconds since this instant.
    epoch: Instant,
    local: LocalLimiter,
    script: Script,
    /// Which backend decided last (for logging and counting the switch-over).
    using_redis: AtomicBool,
    redis_decisions: AtomicU64,
    local_decisions: AtomicU64,
    /// `copilot_rate_limit_decisions_total{outcome, backend}`, indexed `[redis][limited]`.
    decisions: [[metrics::Counter; 2]; 2],
}

impl RateLimiterService {
    pub fn new(
        settings: RateLimitSettings,
        l2: Option<Arc<RedisL2>>,
        wanted: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Arc<Self> {
        let instances = settings.instances.max(1);
        let per_instance = settings.interval() * instances;
        let burst = NonZeroU32::new((settings.burst / instances).max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(per_instance.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let local = RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>();
        let limiter = Arc::new(Self {
            leases: Cache::new(settings.max_keys.max(16)),
            epoch: Instant::now(),
            settings,
            using_redis: AtomicBool::new(l2.is_some()),
            l2,
            wanted,
            local,
            script: Script::new(GCRA),
            redis_decisions: AtomicU64::new(0),
            local_decisions: AtomicU64::new(0),
            decisions: [false, true].map(|redis| {
                let backend = if redis { "redis" } else { "in-process" };
                [false, true].map(|limited| {
                    let outcome = if limited { "limited" } else { "allowed" };
                    metrics::counter!("copilot_rate_limit_decisions_total", "outcome" => outcome, "backend" => backend)
                })
            }),
        });
        limiter.spawn_sweeper();
        limiter
    }

    /// Forgets in-process keys that are back to full capacity, so the key set stays bounded.
    fn spawn_sweeper(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let Some(me) = me.upgrade() else { return };
                // A key is kept only until it is back to full capacity (at most one burst's
                // worth of intervals), so the set is bounded by the rate of new keys.
                me.local.retain_recent();
                me.local.shrink_to_fit();
                metrics::gauge!("copilot_rate_limit_local_keys").set(me.local.len() as f64);
            }
        });
    }

    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// `redis` while the shared limiter is in use, else `in-process`.
    pub fn backend(&self) -> &'static str {
        if self.redis_usable() && self.using_redis.load(Ordering::Relaxed) {
            "redis"
        } else {
            "in-process"
        }
    }

    /// (tokens and refusals taken from Redis, decisions taken in-process).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.redis_decisions.load(Ordering::Relaxed),
            self.local_decisions.load(Ordering::Relaxed),
        )
    }

    fn redis_usable(&self) -> bool {
        self.l2.as_ref().is_some_and(|l2| l2.available()) && (self.wanted)()
    }

    pub async fn check(&self, key: &RateKey) -> RateDecision {
        let shared = match &self.l2 {
            Some(l2) if self.redis_usable() => self.check_shared(l2, key).await,
            _ => None,
        };
        self.switched(shared.is_some());
        let (decision, redis) = match shared {
            Some(decision) => (decision, true),
            None => (self.check_local(key), false),
        };
        self.decisions[usize::from(redis)][usize::from(!decision.allowed)].increment(1);
        decision
    }

    fn switched(&self, to_redis: bool) {
        // A load first: the common case writes nothing (no cache line bouncing between cores).
        if self.using_redis.load(Ordering::Relaxed) != to_redis
            && self.using_redis.swap(to_redis, Ordering::Relaxed) != to_redis
        {
            let to = if to_redis { "redis" } else { "in-process" };
            metrics::counter!("copilot_rate_limit_backend_switches_total", "to" => to).increment(1);
            if to_redis {
                tracing::info!("rate limiter: back on the shared Redis limiter");
            } else {
                tracing::warn!(
                    share = self.settings.instances,
                    "rate limiter: Redis not in use; in-process limiter allows this instance its share"
                );
            }
        }
    }

    fn check_local(&self, key: &RateKey) -> RateDecision {
        self.local_decisions.fetch_add(1, Ordering::Relaxed);
        let instances = self.settings.instances.max(1);
        let limit = (self.settings.limit / instances).max(1);
        let interval = self.settings.interval() * instances;
        match self.local.check_key(&key.local()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let burst = (self.settings.burst / instances).max(1);
                RateDecision {
                    allowed: true,
                    limit,
                    remaining,
                    reset: interval * burst.saturating_sub(remaining),
                    retry_after: Duration::ZERO,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                RateDecision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset: wait,
                    retry_after: wait,
                }
            }
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// A decision from the lease alone, if it can make one.
    fn decide_from_lease(&self, lease: &Lease, now: u64) -> Option<RateDecision> {
        let limit = self.settings.limit;
        let reset = |now: u64| {
            Duration::from_micros(
                lease
                    .reset_at_us
                    .load(Ordering::Acquire)
                    .saturating_sub(now),
            )
        };
        if now < lease.expires_us.load(Ordering::Acquire) {
            let left = lease.tokens.fetch_sub(1, Ordering::AcqRel);
            if left > 0 {
                return Some(RateDecision {
                    allowed: true,
                    limit,
                    remaining: lease.remaining.load(Ordering::Relaxed) + (left - 1) as u32,
                    reset: reset(now),
                    retry_after: Duration::ZERO,
                });
            }
        }
        let denied_until = lease.denied_until_us.load(Ordering::Acquire);
        (now < denied_until).then(|| RateDecision {
            allowed: false,
            limit,
            remaining: 0,
            reset: reset(now),
            retry_after: Duration::from_micros(denied_until - now),
        })
    }

    /// `None` when Redis did not answer (the caller falls back).
    async fn check_shared(&self, l2: &RedisL2, key: &RateKey) -> Option<RateDecision> {
        let name = key.local();
        let lease = match self.leases.get(&name) {
            Some(lease) => lease,
            None => {
                let lease = Arc::new(Lease::default());
                self.leases.insert(name, lease.clone());
                lease
            }
        };
        if let Some(decision) = self.decide_from_lease(&lease, self.now_us()) {
            return Some(decision);
        }
        // One refill per key at a time; those who waited use what it brought.
        let mut refill = lease.refill.lock().await;
        let now = self.now_us();
        if let Some(decision) = self.decide_from_lease(&lease, now) {
            return Some(decision);
        }
        // Used up quickly: ask for twice as much; idle: ask for less.
        let ttl_us = self.settings.lease_ttl.as_micros() as u64;
        let want = match refill.last_us {
            Some(at) if now.saturating_sub(at) < ttl_us => {
                (refill.want * 2).min(self.settings.max_lease())
            }
            _ => (refill.want / 2).max(1),
        };
        let interval = self.settings.interval().as_micros().max(1);
        let tolerance = interval * u128::from(self.settings.burst.max(1));
        let reply: Vec<i64> = l2
            .script(
                "rate_limit",
                &self.script,
                &[&key.redis(&self.settings.prefix)],
                &[
                    interval.to_string(),
                    tolerance.to_string(),
                    want.to_string(),
                ],
            )
            .await?;
        let [granted, remaining, retry_us, reset_us] = reply[..] else {
            return None;
        };
        let (retry_us, reset_us) = (retry_us.max(0) as u64, reset_us.max(0) as u64);
        refill.want = want;
        refill.last_us = Some(now);
        self.redis_decisions
            .fetch_add(granted.max(1) as u64, Ordering::Relaxed);
        let remaining = remaining.max(0) as u32;
        lease.remaining.store(remaining, Ordering::Relaxed);
        lease.reset_at_us.store(now + reset_us, Ordering::Release);
        let limit = self.settings.limit;
        if granted <= 0 {
            lease.tokens.store(0, Ordering::Release);
            lease
                .denied_until_us
                .store(now + retry_us, Ordering::Release);
            return Some(RateDecision {
                allowed: false,
                limit,
                remaining: 0,
                reset: Duration::from_micros(reset_us),
                retry_after: Duration::from_micros(retry_us),
            });
        }
        // This request takes one; the rest are spendable until the lease expires.
        lease.denied_until_us.store(0, Ordering::Release);
        lease.tokens.store(granted - 1, Ordering::Release);
        lease.expires_us.store(now + ttl_us, Ordering::Release);
        Some(RateDecision {
            allowed: true,
            limit,
            remaining: remaining + (granted - 1) as u32,
            reset: Duration::from_micros(reset_us),
            retry_after: Duration::ZERO,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RateKey {
        RateKey::Principal {
            tenant: "acme".into(),
            subject: "alice".into(),
        }
    }

    #[tokio::test]
    async fn without_redis_each_instance_allows_its_share() {
        let limiter = RateLimiterService::new(
            RateLimitSettings {
                limit: 60,
                period: Duration::from_secs(60),
                burst: 10,
                instances: 2,
                ..Default::default()
            },
            None,
            Box::new(|| true),
        );
        let mut allowed = 0;
        for _ in 0..20 {
            if limiter.check(&key()).await.allowed {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 5, "half the burst of 10");
        let denied = limiter.check(&key()).await;
        assert!(!denied.allowed && denied.retry_after > Duration::ZERO);
        assert!(
            limiter
                .check(&RateKey::Peer([127, 0, 0, 1].into()))
                .await
                .allowed
        );
        assert_eq!(limiter.backend(), "in-process");
    }
}
