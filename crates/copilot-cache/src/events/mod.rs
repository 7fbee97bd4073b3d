//! The event hub (DESIGN.md 6.3): live conversation and conversation-list events for SSE
//! subscribers, with replay after a reconnect.
//!
//! Every event of a topic carries its id and the id of the event before it on that topic
//! (`prev`), so any gap (a trimmed replay window, a lost publish, a Redis that restarted without
//! persistence, a missed pub/sub message) is seen and answered with `resync`, never silently.
//!
//! - **Redis mode** (Redis configured, `ENABLE_REDIS_EVENT_HUBS` and the global switch on): a
//!   publish is one script (`XADD` to the topic's bounded stream + `PUBLISH`); ids are stream ids.
//!   Every instance subscribes to the topics its local subscribers want (one pub/sub connection,
//!   reconciled from the wanted set, so an unsubscribe racing a resubscribe never drops a live
//!   subscriber: DESIGN.md 9, item 14) and replays missed events from the stream.
//! - **In-process mode** otherwise: ids from a process counter, replay from a bounded ring.
//!
//! A subscriber has a bounded buffer; one that falls behind is dropped and told `resync`, so it
//! never slows writers or other subscribers. A publish never fails its caller.

mod redis;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use copilot_domain::conversation::Conversation;
use copilot_domain::{ConversationId, TenantId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::redis_l2::RedisL2;

/// An event id: `<milliseconds>-<sequence>`, the shape of a Redis stream id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl EventId {
    /// The id before the first event of a topic.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.trim().split_once('-').ok_or(())?;
        Ok(Self {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// What a subscriber listens to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// One conversation's messages, updates and custom events.
    Conversation(TenantId, ConversationId),
    /// The tenant's conversation list.
    List(TenantId),
    /// Membership changes in the tenant (who lost access); not replayed.
    Access(TenantId),
}

impl Topic {
    /// The topic's name under the prefix; the tenant is a Redis Cluster hash tag.
    fn name(&self) -> String {
        match self {
            Topic::Conversation(t, id) => format!("{{{t}}}:ev:conv:{id}"),
            Topic::List(t) => format!("{{{t}}}:ev:list"),
            Topic::Access(t) => format!("{{{t}}}:ev:access"),
        }
    }
}

/// The kind of event a hub sends when a subscriber must start again from the current state.
pub const RESYNC: &str = "resync";

/// What is published: the SSE event type, its JSON data and, for list events, the conversation
/// before and after the change so each subscriber's read rule can be applied to both.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventBody {
    #[serde(rename = "k")]
    pub kind: String,
    /// JSON text, sent as the SSE `data:` line.
    #[serde(rename = "d")]
    pub data: String,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Box<Conversation>>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Box<Conversation>>,
}

impl EventBody {
    pub fn new(kind: impl Into<String>, data: String) -> Self {
        Self {
            kind: kind.into(),
            data,
            before: None,
            after: None,
        }
    }

    fn resync() -> Self {
        Self::new(RESYNC, "{}".into())
    }
}

/// One delivered event.
#[derive(Debug)]
pub struct Event {
    pub id: EventId,
    /// The id of the previous event of the same topic (`0-0` for the first).
    pub prev: EventId,
    /// The topic's name (without prefix).
    pub topic: Arc<str>,
    pub body: EventBody,
}

impl Event {
    pub fn is_resync(&self) -> bool {
        self.body.kind == RESYNC
    }
}

#[derive(Clone, Debug)]
pub struct HubSettings {
    /// Events kept per topic for replay (Redis stream `MAXLEN ~`, or the in-process ring).
    pub replay_len: usize,
    /// How long an idle topic's stream is kept in Redis.
    pub stream_ttl: Duration,
    /// Events buffered per subscriber before it is dropped with `resync`.
    pub subscriber_buffer: usize,
    /// Topics whose in-process ring is kept (the rest are forgotten, oldest first).
    pub max_local_topics: usize,
    /// Redis key prefix.
    pub prefix: String,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            replay_len: 1_000,
            stream_ttl: Duration::from_secs(3_600),
            subscriber_buffer: 256,
            max_local_topics: 10_000,
            prefix: "copilot".into(),
        }
    }
}

struct Slot {
    id: u64,
    tx: mpsc::Sender<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
}

#[derive(Default)]
struct TopicState {
    slots: Vec<Slot>,
    /// The last in-process event of this topic (the chain of the ring).
    local_last: Option<EventId>,
    /// The last event received from Redis and dispatched here; `None` while Redis does not
    /// carry this topic to this instance.
    redis_last: Option<EventId>,
    /// In-process replay window.
    ring: VecDeque<Arc<Event>>,
    /// For forgetting idle topics: a counter value, higher is more recent.
    touched: u64,
}

/// Counters for `/v1/admin/cache` and `/metrics`.
#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
}

pub(crate) struct HubInner {
    settings: HubSettings,
    topics: Mutex<HashMap<String, TopicState>>,
    next_slot: AtomicU64,
    /// Bumped (under the topics lock) by every new subscription: the Redis task reports which
    /// generation its subscriptions include, so a subscriber waits for a pass that saw it.
    wanted_generation: AtomicU64,
    touch: AtomicU64,
    last_local: Mutex<EventId>,
    /// Redis, when configured; whether it is used is asked per call.
    redis: Option<redis::RedisHub>,
    /// Whether events go through Redis now (flag and global switch).
    redis_wanted: Box<dyn Fn() -> bool + Send + Sync>,
    closed: watch::Sender<bool>,
    counters: Counters,
}

/// The hub: cheap to clone, shared by every handler.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

/// Why a replay could not be served exactly.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventHub {
    /// An in-process hub (no Redis).
    pub fn local(settings: HubSettings) -> Self {
        Self::build(settings, None, Box::new(|| false))
    }

    /// A hub that uses `l2`'s Redis while `wanted()` says so, in-process otherwise.
    /// Spawns its subscriber task; call inside a tokio runtime.
    pub fn with_redis(
        settings: HubSettings,
        l2: Arc<RedisL2>,
        wanted: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        let redis = redis::RedisHub::new(l2);
        let hub = Self::build(settings, Some(redis), wanted);
        redis::spawn_subscriber(Arc::downgrade(&hub.inner));
        hub
    }

    fn build(
        settings: HubSettings,
        redis: Option<redis::RedisHub>,
        redis_wanted: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        let (closed, _) = watch::channel(false);
        Self {
            inner: Arc::new(HubInner {
                settings,
                topics: Mutex::new(HashMap::new()),
                next_slot: AtomicU64::new(1),
                wanted_generation: AtomicU64::new(0),
                touch: AtomicU64::new(0),
                last_local: Mutex::new(EventId::ZERO),
                redis,
                redis_wanted,
                closed,
                counters: Counters::default(),
            }),
        }
    }

    /// `redis` when events cross instances now, else `in-process`.
    pub fn mode(&self) -> &'static str {
        if self.inner.uses_redis() {
            "redis"
        } else {
            "in-process"
        }
    }

    /// Whether Redis carries the events now and answers.
    pub fn redis_healthy(&self) -> bool {
        self.inner.uses_redis() && self.inner.redis.as_ref().is_some_and(|r| r.connected())
    }

    /// (delivered, dropped) since start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.inner.counters.delivered.load(Ordering::Relaxed),
            self.inner.counters.dropped.load(Ordering::Relaxed),
        )
    }

    /// Local subscribers now.
    pub fn subscribers(&self) -> usize {
        lock(&self.inner.topics)
            .values()
            .map(|t| t.slots.len())
            .sum()
    }

    /// Ends every subscription (shutdown); the subscriber task stops too.
    pub fn close(&self) {
        let _ = self.inner.closed.send(true);
    }

    /// Publishes an event; returns its id, or `None` when it reached only this instance's
    /// subscribers (Redis failed: the topic is marked so later readers get `resync`).
    pub async fn publish(&self, topic: &Topic, body: EventBody) -> Option<EventId> {
        let name = topic.name();
        if self.inner.uses_redis()
            && let Some(redis) = &self.inner.redis
        {
            match redis.publish(&self.inner.settings, &name, &body).await {
                Some(id) => {
                    metrics::counter!("copilot_events_published_total", "mode" => "redis")
                        .increment(1);
                    return Some(id);
                }
                None => {
                    metrics::counter!("copilot_events_published_total", "mode" => "failed")
                        .increment(1);
                    tracing::debug!(topic = %name, "event publish to Redis failed; delivered locally");
                    redis.mark_gap(&name);
                    self.inner.publish_local(&name, body);
                    return None;
                }
            }
        }
        metrics::counter!("copilot_events_published_total", "mode" => "in-process").increment(1);
        Some(self.inner.publish_local(&name, body))
    }

    /// Subscribes to `primary` (and `extra`, e.g. the tenant's access topic). With
    /// `last_event_id`, the events after it come first (or one `resync` when they are no longer
    /// all known); `Some(Err(()))` is an id that cannot be ours: `resync`.
    pub async fn subscribe(
        &self,
        primary: &Topic,
        extra: Option<&Topic>,
        last_event_id: Option<Result<EventId, ()>>,
    ) -> Subscription {
        let inner = &self.inner;
        let (tx, rx) = mpsc::channel(inner.settings.subscriber_buffer.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let slot_id = inner.next_slot.fetch_add(1, Ordering::Relaxed);
        let primary_name: Arc<str> = primary.name().into();
        let mut names = vec![primary_name.to_string()];
        if let Some(extra) = extra {
            names.push(extra.name());
        }
        let uses_redis = inner.uses_redis();
        let mut replay = VecDeque::new();
        let generation;
        {
            let mut topics = lock(&inner.topics);
            generation = inner.wanted_generation.fetch_add(1, Ordering::Relaxed) + 1;
            for name in &names {
                let touched = inner.touch.fetch_add(1, Ordering::Relaxed);
                let state = topics.entry(name.clone()).or_default();
                state.touched = touched;
                state.slots.push(Slot {
                    id: slot_id,
                    tx: tx.clone(),
                    overflowed: overflowed.clone(),
                });
            }
            // In-process replay under the same lock as the registration: nothing falls between.
            if !uses_redis && let Some(last) = &last_event_id {
                let ring = topics.get(&*primary_name).map(|t| &t.ring);
                match last.as_ref().ok().and_then(|x| ring_after(ring, *x)) {
                    Some(events) => replay.extend(events),
                    None => replay.push_back(inner.resync_event(&primary_name)),
                }
            }
        }
        metrics::gauge!("copilot_events_subscribers").increment(1.0);
        let mut subscription = Subscription {
            hub: Arc::downgrade(inner),
            slot_id,
            names,
            primary: primary_name.clone(),
            rx,
            replay,
            primary_last: None,
            overflowed,
            closed: inner.closed.subscribe(),
            finished: false,
        };
        if uses_redis && let Some(redis) = &inner.redis {
            // Live delivery starts once Redis has the subscription (waited for, briefly); the
            // stream then fills the window between the client's last event and now.
            // Duplicates are skipped by id, and a live event that does not follow the last one
            // handed out is a gap (`resync`), so a subscription confirmed late is still exact
            // or says so.
            redis.wanted_changed();
            redis.wait_subscribed(generation, &subscription.names).await;
            if let Some(last) = last_event_id {
                let events = match last {
                    Ok(x) => redis
                        .replay(&inner.settings, &primary_name, x)
                        .await
                        .map(|events| (x, events)),
                    Err(()) => Err(Gap),
                };
                match events {
                    Ok((x, events)) => {
                        subscription.primary_last = Some(events.last().map_or(x, |e| e.id));
                        subscription.replay.extend(events);
                    }
                    Err(Gap) => subscription
                        .replay
                        .push_back(inner.resync_event(&primary_name)),
                }
            }
        } else if let Some(Ok(x)) = last_event_id {
            let replayed_to = subscription
                .replay
                .iter()
                .filter(|e| !e.is_resync())
                .map(|e| e.id)
                .max();
            let exact = !subscription.replay.iter().any(|e| e.is_resync());
            if exact {
                subscription.primary_last = Some(replayed_to.unwrap_or(x));
            }
        }
        subscription
    }
}

/// The events of `ring` after `x`, if the ring still holds everything after it.
fn ring_after(ring: Option<&VecDeque<Arc<Event>>>, x: EventId) -> Option<Vec<Arc<Event>>> {
    let Some(ring) = ring else {
        // Nothing published on this topic since start: only "nothing yet" is provable.
        return (x == EventId::ZERO).then(Vec::new);
    };
    let start = match ring.iter().position(|e| e.prev == x) {
        Some(i) => i,
        None if ring.back().is_some_and(|e| e.id == x) => return Some(Vec::new()),
        None => return None,
    };
    Some(ring.iter().skip(start).cloned().collect())
}

impl HubInner {
    fn uses_redis(&self) -> bool {
        self.redis.is_some() && (self.redis_wanted)()
    }

    fn resync_event(&self, topic: &Arc<str>) -> Arc<Event> {
        Arc::new(Event {
            id: EventId::ZERO,
            prev: EventId::ZERO,
            topic: topic.clone(),
            body: EventBody::resync(),
        })
    }

    /// A process-unique, increasing id (milliseconds since the epoch and a sequence).
    fn next_local_id(&self) -> EventId {
        let ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let mut last = lock(&self.last_local);
        *last = if ms > last.ms {
            EventId { ms, seq: 0 }
        } else {
            EventId {
                ms: last.ms,
                seq: last.seq + 1,
            }
        };
        *last
    }

    fn publish_local(&self, name: &str, body: EventBody) -> EventId {
        let id = self.next_local_id();
        let touched = self.touch.fetch_add(1, Ordering::Relaxed);
        let mut topics = lock(&self.topics);
        if !topics.contains_key(name) && topics.len() >= self.settings.max_local_topics {
            forget_idle_topics(&mut topics, self.settings.max_local_topics / 2);
        }
        let state = topics.entry(name.to_owned()).or_default();
        state.touched = touched;
        let event = Arc::new(Event {
            id,
            prev: state.local_last.unwrap_or(EventId::ZERO),
            topic: name.into(),
            body,
        });
        state.ring.push_back(event.clone());
        while state.ring.len() > self.settings.replay_len {
            state.ring.pop_front();
        }
        state.local_last = Some(id);
        self.dispatch(state, &event);
        id
    }

    /// Hands `event` to every local subscriber of the topic without waiting: a full buffer drops
    /// that subscriber (it will be told `resync`).
    fn dispatch(&self, state: &mut TopicState, event: &Arc<Event>) {
        state
            .slots
            .retain(|slot| match slot.tx.try_send(event.clone()) {
                Ok(()) => {
                    self.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.overflowed.store(true, Ordering::Relaxed);
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("copilot_events_dropped_total", "reason" => "slow_subscriber")
                    .increment(1);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }

    /// Dispatches an event that came through Redis, unless it is not newer than the last one
    /// (`after`: only if the topic's last is still exactly that, so concurrent catch-ups do
    /// not interleave).
    fn dispatch_from_redis(&self, name: &str, event: Arc<Event>) {
        let mut topics = lock(&self.topics);
        if let Some(state) = topics.get_mut(name) {
            if state.redis_last.is_some_and(|last| event.id <= last) && !event.is_resync() {
                return;
            }
            if !event.is_resync() {
                state.redis_last = Some(event.id);
            }
            self.dispatch(state, &event);
        }
    }

    /// The topics some local subscriber wants (for the Redis subscriber task); none while
    /// events do not go through Redis.
    fn wanted(&self) -> (u64, Vec<String>) {
        let topics = lock(&self.topics);
        let generation = self.wanted_generation.load(Ordering::Relaxed);
        if !self.uses_redis() {
            return (generation, Vec::new());
        }
        let names = topics
            .iter()
            .filter(|(_, t)| !t.slots.is_empty())
            .map(|(name, _)| name.clone())
            .collect();
        (generation, names)
    }

    fn unsubscribe(&self, slot_id: u64, names: &[String]) {
        let mut topics = lock(&self.topics);
        for name in names {
            if let Some(state) = topics.get_mut(name) {
                state.slots.retain(|s| s.id != slot_id);
                if state.slots.is_empty() {
                    // Redis stops carrying it here: a later subscriber starts from the head.
                    state.redis_last = None;
                }
            }
        }
        drop(topics);
        if let Some(redis) = &self.redis {
            redis.wanted_changed();
        }
    }
}

/// Forgets topics without subscribers, least recently touched first, down to `keep`.
fn forget_idle_topics(topics: &mut HashMap<String, TopicState>, keep: usize) {
    let mut idle: Vec<(u64, String)> = topics
        .iter()
        .filter(|(_, t)| t.slots.is_empty())
        .map(|(name, t)| (t.touched, name.clone()))
        .collect();
    idle.sort_unstable();
    let excess = topics.len().saturating_sub(keep);
    for (_, name) in idle.into_iter().take(excess) {
        topics.remove(&name);
    }
}

/// One subscriber's events: the replay first, then live ones; `resync` once when it fell
/// behind (then it ends).
pub struct Subscription {
    hub: Weak<HubInner>,
    slot_id: u64,
    names: Vec<String>,
    primary: Arc<str>,
    rx: mpsc::Receiver<Arc<Event>>,
    replay: VecDeque<Arc<Event>>,
    /// The newest primary-topic id handed out: older live duplicates are skipped.
    primary_last: Option<EventId>,
    overflowed: Arc<AtomicBool>,
    closed: watch::Receiver<bool>,
    finished: bool,
}

impl Subscription {
    /// The next event; `None` when the stream is over (shutdown, or after an overflow's
    /// `resync`).
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        if self.finished {
            return None;
        }
        if let Some(event) = self.replay.pop_front() {
            return Some(event);
        }
        loop {
            if *self.closed.borrow() {
                self.finished = true;
                return None;
            }
            let received = tokio::select! {
                received = self.rx.recv() => received,
                _ = self.closed.changed() => None,
            };
            match received {
                Some(event) => {
                    if *event.topic == *self.primary && event.is_resync() {
                        // Whoever sent it found a gap: the chain starts again after it.
                        self.primary_last = None;
                    }
                    if *event.topic == *self.primary && !event.is_resync() {
                        let last = self.primary_last.replace(event.id);
                        match last {
                            Some(last) if event.id <= last => {
                                self.primary_last = Some(last);
                                continue;
                            }
                            // Something between what this subscriber has and this event is
                            // missing: say so, then go on from here.
                            Some(last) if event.prev != last => {
                                metrics::counter!("copilot_events_resyncs_total", "reason" => "gap")
                                    .increment(1);
                                self.replay.push_back(event);
                                return Some(Arc::new(Event {
                                    id: EventId::ZERO,
                                    prev: EventId::ZERO,
                                    topic: self.primary.clone(),
                                    body: EventBody::resync(),
                                }));
                            }
                            _ => {}
                        }
                    }
                    return Some(event);
                }
                None => {
                    self.finished = true;
                    if self.overflowed.load(Ordering::Relaxed) && !*self.closed.borrow() {
                        metrics::counter!("copilot_events_resyncs_total", "reason" => "overflow")
                            .increment(1);
                        return Some(Arc::new(Event {
                            id: EventId::ZERO,
                            prev: EventId::ZERO,
                            topic: self.primary.clone(),
                            body: EventBody::resync(),
                        }));
                    }
                    return None;
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!("copilot_events_subscribers").decrement(1.0);
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(self.slot_id, &self.names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Topic {
        Topic::List(TenantId::parse("acme").unwrap())
    }

    #[tokio::test]
    async fn local_replay_is_exact_and_a_gap_is_resync() {
        let hub = EventHub::local(HubSettings {
            replay_len: 3,
            ..Default::default()
        });
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                hub.publish(&topic(), EventBody::new("x", format!("{i}")))
                    .await
                    .unwrap(),
            );
        }
        // Within the window: exactly what came after.
        let mut sub = hub.subscribe(&topic(), None, Some(Ok(ids[2]))).await;
        assert_eq!(sub.next().await.unwrap().id, ids[3]);
        assert_eq!(sub.next().await.unwrap().id, ids[4]);
        // Beyond it: one resync.
        let mut old = hub.subscribe(&topic(), None, Some(Ok(ids[0]))).await;
        assert!(old.next().await.unwrap().is_resync());
        // Up to date: nothing to replay; live events follow.
        let mut now = hub.subscribe(&topic(), None, Some(Ok(ids[4]))).await;
        let id = hub
            .publish(&topic(), EventBody::new("x", "5".into()))
            .await
            .unwrap();
        assert_eq!(now.next().await.unwrap().id, id);
        assert_eq!(sub.next().await.unwrap().id, id);
        // Garbage id: resync.
        let mut bad = hub.subscribe(&topic(), None, Some(Err(()))).await;
        assert!(bad.next().await.unwrap().is_resync());
    }

    #[tokio::test]
    async fn a_stalled_subscriber_is_dropped_with_resync_and_others_go_on() {
        let hub = EventHub::local(HubSettings {
            subscriber_buffer: 4,
            ..Default::default()
        });
        let mut stalled = hub.subscribe(&topic(), None, None).await;
        let mut reader = hub.subscribe(&topic(), None, None).await;
        for i in 0..20 {
            hub.publish(&topic(), EventBody::new("x", format!("{i}")))
                .await
                .unwrap();
            assert_eq!(reader.next().await.unwrap().body.data, format!("{i}"));
        }
        let mut got = Vec::new();
        while let Some(e) = stalled.next().await {
            got.push(e);
        }
        assert_eq!(got.len(), 5, "its buffer, then resync, then the end");
        assert!(got.last().unwrap().is_resync());
        assert_eq!(hub.subscribers(), 1);
    }

    #[tokio::test]
    async fn close_ends_every_subscription() {
        let hub = EventHub::local(HubSettings::default());
        let mut sub = hub.subscribe(&topic(), None, None).await;
        hub.close();
        assert!(sub.next().await.is_none());
    }
}
