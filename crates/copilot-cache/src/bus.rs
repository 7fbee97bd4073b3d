//! The invalidation bus (DESIGN.md 5.1-5.2): every write publishes `{cache, key, version}` on a
//! Redis channel and every instance drops older L1 entries for that key. A dedicated subscriber
//! connection carries it; a heartbeat published every 250 ms must come back within a second, so
//! a Redis that accepts connections but never answers (SIGSTOP) is noticed within about a second.
//! Its health is one of the two paths [`crate::trust::L1Trust`] weighs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::redis_l2::RedisL2;
pub use crate::trust::L1Sink;
use crate::trust::{L1Trust, Path};

const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
const HEALTHY_WITHIN: Duration = Duration::from_secs(1);

pub struct Bus {
    l2: Arc<RedisL2>,
    subscribers: crate::redis_link::PubSubNodes,
    channel: String,
    instance: String,
    healthy: AtomicBool,
    last_heard: Mutex<Option<Instant>>,
    trust: Arc<L1Trust>,
}

impl Bus {
    /// A bus whose health and messages go to `trust`.
    pub fn new(l2: Arc<RedisL2>, prefix: &str, trust: Arc<L1Trust>) -> Arc<Self> {
        let instance = format!("{}-{}", std::process::id(), rand_suffix());
        Arc::new(Self {
            subscribers: l2.subscribers(),
            l2,
            channel: format!("{prefix}:v1:invalidations"),
            instance,
            healthy: AtomicBool::new(false),
            last_heard: Mutex::new(None),
            trust,
        })
    }

    /// The trust this bus reports to.
    pub fn trust(&self) -> &Arc<L1Trust> {
        &self.trust
    }

    /// Whether the bus delivers invalidations now.
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

    /// Tests only: a health transition without a Redis to lose.
    #[cfg(test)]
    pub(crate) fn force_health(&self, healthy: bool) {
        self.set_healthy(healthy);
    }

    fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            metrics::gauge!("copilot_cache_bus_healthy").set(if healthy { 1.0 } else { 0.0 });
            self.trust.set_path(Path::Redis, healthy);
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
                self.trust.deliver(cache, key, version);
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
                    let mut pubsub = bus.subscribers.connect().await?;
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
