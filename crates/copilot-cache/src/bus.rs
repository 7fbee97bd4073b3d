//! The invalidation bus (DESIGN.md 5.1-5.2): every write publishes `{cache, key, version}` on a
//! Redis channel and every instance drops older L1 entries for that key. A dedicated subscriber
//! connection carries it; a heartbeat published every 250 ms must come back within a second, so
//! a Redis that accepts connections but never answers (SIGSTOP) is noticed within about a second.
//! While the bus is not healthy, L1 is flushed and bypassed (the rule of Redis client-side
//! caching): reads go to L2 or the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::redis_l2::RedisL2;

const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
const HEALTHY_WITHIN: Duration = Duration::from_secs(1);

/// What the bus does to one cache's L1.
pub trait L1Sink: Send + Sync {
    fn cache_name(&self) -> &'static str;
    /// A write elsewhere (or here) produced `version` for `key`.
    fn invalidate_l1(&self, key: &str, version: u64);
    /// The bus lost (or regained) its footing: nothing in L1 can be trusted.
    fn flush_l1(&self);
}

pub struct Bus {
    l2: Arc<RedisL2>,
    client: redis::Client,
    channel: String,
    instance: String,
    healthy: AtomicBool,
    epoch: std::sync::atomic::AtomicU64,
    last_heard: Mutex<Option<Instant>>,
    sinks: Mutex<Vec<Arc<dyn L1Sink>>>,
}

impl Bus {
    pub fn new(l2: Arc<RedisL2>, url: &str, prefix: &str) -> Result<Arc<Self>, redis::RedisError> {
        let instance = format!("{}-{}", std::process::id(), rand_suffix());
        Ok(Arc::new(Self {
            l2,
            client: redis::Client::open(url)?,
            channel: format!("{prefix}:v1:invalidations"),
            instance,
            healthy: AtomicBool::new(false),
            epoch: std::sync::atomic::AtomicU64::new(0),
            last_heard: Mutex::new(None),
            sinks: Mutex::new(Vec::new()),
        }))
    }

    pub fn register(&self, sink: Arc<dyn L1Sink>) {
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sink);
    }

    /// Whether L1 may be trusted now.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Publishes an invalidation; `false` when it could not be sent (the caller retries).
    pub async fn publish(&self, cache: &str, key: &str, version: u64) -> bool {
        let sent = self
            .l2
            .publish(&self.channel, &format!("i|{cache}|{version}|{key}"))
            .await;
        metrics::counter!("copilot_cache_bus_messages_total", "direction" => "sent", "ok" => if sent { "true" } else { "false" })
            .increment(1);
        sent
    }

    /// Changes at every health transition: a fill that began in another epoch may carry a
    /// value whose invalidation this process never heard, and is kept out of L1.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Tests only: a health transition without a Redis to lose.
    #[cfg(test)]
    pub(crate) fn force_health(&self, healthy: bool) {
        self.set_healthy(healthy);
    }

    fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            // Either way, whatever L1 holds was kept under other conditions: drop it.
            for sink in self.sinks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                sink.flush_l1();
            }
            metrics::gauge!("copilot_cache_bus_healthy").set(if healthy { 1.0 } else { 0.0 });
            if healthy {
                tracing::info!("invalidation bus healthy: L1 in use");
            } else {
                tracing::warn!("invalidation bus unhealthy: L1 flushed and bypassed");
            }
        }
    }

    fn heard(&self) {
        *self.last_heard.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    fn recently_heard(&self) -> bool {
        self.last_heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < HEALTHY_WITHIN)
    }

    fn handle(&self, payload: &str) {
        self.heard();
        let mut parts = payload.splitn(4, '|');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("i"), Some(cache), Some(version), Some(key)) => {
                let Ok(version) = version.parse::<u64>() else {
                    return;
                };
                metrics::counter!("copilot_cache_bus_messages_total", "direction" => "received", "ok" => "true").increment(1);
                for sink in self.sinks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    if sink.cache_name() == cache {
                        sink.invalidate_l1(key, version);
                    }
                }
            }
            (Some("h"), Some(instance), _, _)
                if instance == self.instance && !self.is_healthy() =>
            {
                self.set_healthy(true);
            }
            _ => {}
        }
    }

    /// Runs the subscriber until the bus is dropped: connect, subscribe, listen, heartbeat;
    /// on any failure mark unhealthy and start again.
    pub fn spawn(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(bus) = weak.upgrade() else { return };
                let connected = tokio::time::timeout(HEALTHY_WITHIN, async {
                    let mut pubsub = bus.client.get_async_pubsub().await?;
                    pubsub.subscribe(&bus.channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                })
                .await;
                let Ok(Ok(pubsub)) = connected else {
                    bus.set_healthy(false);
                    drop(bus);
                    tokio::time::sleep(HEARTBEAT_EVERY).await;
                    continue;
                };
                let mut messages = pubsub.into_on_message();
                let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
                drop(bus);
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(bus) = weak.upgrade() else { return };
                            match message {
                                Some(m) => {
                                    if let Ok(payload) = m.get_payload::<String>() {
                                        bus.handle(&payload);
                                    }
                                }
                                None => {
                                    bus.set_healthy(false);
                                    break;
                                }
                            }
                        }
                        _ = ticks.tick() => {
                            let Some(bus) = weak.upgrade() else { return };
                            if !bus.recently_heard() && bus.is_healthy() {
                                bus.set_healthy(false);
                            }
                            let heartbeat = format!("h|{}", bus.instance);
                            bus.l2.publish(&bus.channel, &heartbeat).await;
                            // A subscriber that hears nothing for long is reconnected.
                            let stale = bus.last_heard.lock().unwrap_or_else(|e| e.into_inner())
                                .is_some_and(|at| at.elapsed() > HEALTHY_WITHIN * 3);
                            if stale {
                                *bus.last_heard.lock().unwrap_or_else(|e| e.into_inner()) = None;
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
}

/// A process-unique suffix (the pid alone repeats across containers).
pub(crate) fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}
