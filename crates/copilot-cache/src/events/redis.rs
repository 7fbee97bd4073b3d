//! The Redis side of the event hub: one script per publish (`XADD` + `PUBLISH`), one pub/sub
//! connection per instance whose subscriptions follow the wanted topics, and replay from the
//! topic's stream.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use redis::Script;
use tokio::sync::{Notify, watch};

use super::{Event, EventBody, EventId, Gap, HubInner, HubSettings, lock};
use crate::redis_l2::RedisL2;

/// Appends to the topic's bounded stream with the id of the entry before it, refreshes the
/// stream's lifetime and publishes `id|prev|event` on the channel of the same name; one atomic
/// step, so stream order is publish order. `ARGV[4]` is the publish's own token: a retry
/// (`ARGV[5]` = 1) whose first attempt did run (it only timed out on the way back) finds its
/// token among the newest entries and returns that id instead of appending the event twice.
const PUBLISH: &str = r"
local recent = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[5] == '1' and 16 or 1)
if ARGV[5] == '1' then
  for _, entry in ipairs(recent) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'u' and fields[i + 1] == ARGV[4] then return entry[1] end
    end
  end
end
local prev = '0-0'
if recent[1] then prev = recent[1][1] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', prev, 'u', ARGV[4], 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', KEYS[1], id .. '|' .. prev .. '|' .. ARGV[2])
return id
";

const CONNECT_WITHIN: Duration = Duration::from_secs(1);
/// How long a new stream waits for Redis to deliver its topic before it starts anyway.
const SUBSCRIBE_WITHIN: Duration = Duration::from_secs(5);
const RECONCILE_EVERY: Duration = Duration::from_millis(500);
/// Topics remembered as "an event was lost here" while Redis is away.
const MAX_GAPS: usize = 10_000;

pub(crate) struct RedisHub {
    l2: Arc<RedisL2>,
    subscribers: crate::redis_link::PubSubNodes,
    publish: Script,
    wake: Arc<Notify>,
    connected: AtomicBool,
    /// Topics Redis delivers to this instance now, and the newest subscription generation the
    /// pass that subscribed them had seen.
    subscribed: watch::Sender<(u64, HashSet<String>)>,
    /// Topics whose events could not reach Redis: a `resync` is written when it is back.
    gaps: Mutex<HashSet<String>>,
}

type StreamEntries = Vec<(String, HashMap<String, String>)>;

enum Replay {
    Gap,
    Unavailable,
}

impl RedisHub {
    pub(crate) fn new(l2: Arc<RedisL2>) -> Self {
        Self {
            subscribers: l2.subscribers(),
            l2,
            publish: Script::new(PUBLISH),
            wake: Arc::new(Notify::new()),
            connected: AtomicBool::new(false),
            subscribed: watch::channel((0, HashSet::new())).0,
            gaps: Mutex::new(HashSet::new()),
        }
    }

    fn key(settings: &HubSettings, name: &str) -> String {
        format!("{}:v1:{name}", settings.prefix)
    }

    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn wanted_changed(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn mark_gap(&self, name: &str) {
        let mut gaps = lock(&self.gaps);
        if gaps.len() < MAX_GAPS {
            gaps.insert(name.to_owned());
        }
    }

    pub(crate) async fn publish(
        &self,
        settings: &HubSettings,
        name: &str,
        body: &EventBody,
    ) -> Option<EventId> {
        let encoded = serde_json::to_string(body).ok()?;
        let key = Self::key(settings, name);
        let mut args = [
            settings.replay_len.to_string(),
            encoded,
            settings.stream_ttl.as_millis().to_string(),
            crate::bus::rand_suffix().to_string(),
            "0".to_owned(),
        ];
        // Once more on failure: the first command on a connection Redis dropped (a restart)
        // fails while the connection is re-established; a lost event costs every subscriber a
        // resync. The retry carries the same token, so a first attempt that ran but answered
        // after the deadline is not appended twice. With the breaker open both attempts
        // return at once.
        for attempt in 0..2 {
            args[4] = attempt.to_string();
            let id: Option<String> = self
                .l2
                .script("event_publish", &self.publish, &[&key], &args)
                .await;
            if let Some(id) = id {
                return id.parse().ok();
            }
        }
        None
    }

    /// Waits (briefly) until a subscription pass that saw `generation` has Redis deliver every
    /// one of `names` here.
    pub(crate) async fn wait_subscribed(&self, generation: u64, names: &[String]) -> bool {
        if !self.connected() {
            return false;
        }
        self.wanted_changed();
        let mut rx = self.subscribed.subscribe();
        let all = |(seen, set): &(u64, HashSet<String>)| {
            *seen >= generation && names.iter().all(|n| set.contains(n))
        };
        tokio::time::timeout(SUBSCRIBE_WITHIN, rx.wait_for(all))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The events of topic `name` after `after`, if the stream still holds all of them. A
    /// Redis that does not answer is asked again a few times (its connection may be coming back
    /// from a restart) before the answer is `Gap`.
    pub(crate) async fn replay(
        &self,
        settings: &HubSettings,
        name: &str,
        after: EventId,
    ) -> Result<Vec<Arc<Event>>, Gap> {
        for attempt in 0..4 {
            match self.replay_once(settings, name, after).await {
                Ok(events) => return Ok(events),
                Err(Replay::Gap) => return Err(Gap),
                Err(Replay::Unavailable) if attempt < 3 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Replay::Unavailable) => {}
            }
        }
        Err(Gap)
    }

    async fn replay_once(
        &self,
        settings: &HubSettings,
        name: &str,
        after: EventId,
    ) -> Result<Vec<Arc<Event>>, Replay> {
        let key = Self::key(settings, name);
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&key)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(settings.replay_len + 128);
        let entries: StreamEntries = self
            .l2
            .query("event_replay", cmd)
            .await
            .ok_or(Replay::Unavailable)?;
        if entries.is_empty() {
            // Nothing after it: exact only if `after` is the newest entry (or nothing was sent).
            let head = self.head(settings, name).await.ok_or(Replay::Unavailable)?;
            return if head == after {
                Ok(Vec::new())
            } else {
                Err(Replay::Gap)
            };
        }
        let topic: Arc<str> = name.into();
        let mut events = Vec::with_capacity(entries.len());
        let mut expected = after;
        for (id, fields) in entries {
            let event = decode_entry(&topic, &id, &fields).ok_or(Replay::Gap)?;
            if event.prev != expected {
                return Err(Replay::Gap);
            }
            expected = event.id;
            events.push(Arc::new(event));
        }
        Ok(events)
    }

    /// The newest id of topic `name` (`0-0` when it has no stream).
    async fn head(&self, settings: &HubSettings, name: &str) -> Option<EventId> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(Self::key(settings, name))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let entries: StreamEntries = self.l2.query("event_head", cmd).await?;
        Some(
            entries
                .first()
                .and_then(|(id, _)| id.parse().ok())
                .unwrap_or(EventId::ZERO),
        )
    }

    /// Brings topic `name` up to date after Redis started delivering it: a fresh topic starts at
    /// the stream's head; one with a known last event gets what it missed (or `resync`).
    async fn catch_up(&self, hub: &HubInner, name: &str) {
        let last = lock(&hub.topics).get(name).and_then(|t| t.redis_last);
        match last {
            None => {
                if let Some(head) = self.head(&hub.settings, name).await
                    && let Some(state) = lock(&hub.topics).get_mut(name)
                    && state.redis_last.is_none()
                {
                    state.redis_last = Some(head);
                }
            }
            Some(last) => self.fill_gap(hub, name, last, None).await,
        }
    }

    /// Events after `last` from the stream, dispatched in order; `resync` if some are gone.
    async fn fill_gap(&self, hub: &HubInner, name: &str, last: EventId, seen: Option<EventId>) {
        match self.replay(&hub.settings, name, last).await {
            Ok(events) => {
                for event in events {
                    hub.dispatch_from_redis(name, event);
                }
            }
            Err(Gap) => {
                metrics::counter!("copilot_events_resyncs_total", "reason" => "gap").increment(1);
                let head = match seen {
                    Some(id) => Some(id),
                    None => self.head(&hub.settings, name).await,
                };
                if let Some(state) = lock(&hub.topics).get_mut(name) {
                    state.redis_last = head.or(state.redis_last);
                }
                hub.dispatch_from_redis(name, hub.resync_event(&name.into()));
            }
        }
    }

    /// One pub/sub message: `id|prev|event`.
    async fn on_message(&self, hub: &HubInner, channel: &str, payload: &str) {
        let prefix = format!("{}:v1:", hub.settings.prefix);
        let Some(name) = channel.strip_prefix(&prefix) else {
            return;
        };
        let mut parts = payload.splitn(3, '|');
        let (Some(id), Some(prev), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let (Ok(id), Ok(prev), Ok(body)) = (
            id.parse::<EventId>(),
            prev.parse::<EventId>(),
            serde_json::from_str::<EventBody>(body),
        ) else {
            return;
        };
        enum Next {
            Deliver,
            Skip,
            FillFrom(EventId),
        }
        let next = match lock(&hub.topics).get(name) {
            None => Next::Skip,
            Some(state) => match state.redis_last {
                None => Next::Deliver,
                Some(last) if id <= last => Next::Skip,
                Some(last) if prev == last => Next::Deliver,
                Some(last) => Next::FillFrom(last),
            },
        };
        match next {
            Next::Deliver => hub.dispatch_from_redis(
                name,
                Arc::new(Event {
                    id,
                    prev,
                    topic: name.into(),
                    body,
                }),
            ),
            Next::Skip => {}
            Next::FillFrom(last) => self.fill_gap(hub, name, last, Some(id)).await,
        }
    }

    /// Writes a `resync` into every topic whose events were lost while Redis was away.
    async fn write_gap_markers(&self, settings: &HubSettings) {
        let gaps: Vec<String> = lock(&self.gaps).drain().collect();
        for (i, name) in gaps.iter().enumerate() {
            if self
                .publish(settings, name, &EventBody::resync())
                .await
                .is_none()
            {
                let mut kept = lock(&self.gaps);
                kept.extend(gaps[i..].iter().cloned());
                return;
            }
        }
    }
}

fn decode_entry(topic: &Arc<str>, id: &str, fields: &HashMap<String, String>) -> Option<Event> {
    Some(Event {
        id: id.parse().ok()?,
        prev: fields.get("p")?.parse().ok()?,
        topic: topic.clone(),
        body: serde_json::from_str(fields.get("e")?).ok()?,
    })
}

/// The subscriber task: connect, subscribe to what is wanted, deliver, reconcile whenever the
/// wanted set changes (and every half second); on any failure, start again. Because every pass
/// compares the wanted set with what Redis has, an unsubscribe and a resubscribe racing each
/// other end with the topic subscribed as long as anyone wants it.
pub(crate) fn spawn_subscriber(hub: Weak<HubInner>) {
    tokio::spawn(async move {
        let Some((client, wake, mut closed)) = hub.upgrade().and_then(|h| {
            let redis = h.redis.as_ref()?;
            Some((
                redis.subscribers.clone(),
                redis.wake.clone(),
                h.closed.subscribe(),
            ))
        }) else {
            return;
        };
        loop {
            if *closed.borrow() {
                return;
            }
            let connected = tokio::time::timeout(CONNECT_WITHIN, client.connect()).await;
            let Ok(Ok(pubsub)) = connected else {
                tokio::select! {
                    _ = tokio::time::sleep(RECONCILE_EVERY) => continue,
                    _ = closed.changed() => return,
                }
            };
            let (mut sink, mut messages) = pubsub.split();
            let mut actual: HashSet<String> = HashSet::new();
            let mut reconcile = true;
            let mut tick = tokio::time::interval(RECONCILE_EVERY);
            'connection: loop {
                if reconcile {
                    let Some(inner) = hub.upgrade() else { return };
                    let Some(redis) = inner.redis.as_ref() else {
                        return;
                    };
                    redis.connected.store(true, Ordering::Relaxed);
                    let (generation, wanted) = inner.wanted();
                    let wanted: HashSet<String> = wanted.into_iter().collect();
                    let add: Vec<String> = wanted.difference(&actual).cloned().collect();
                    let remove: Vec<String> = actual.difference(&wanted).cloned().collect();
                    let timeout = redis.l2.timeout().max(Duration::from_millis(200));
                    if !add.is_empty() {
                        let channels: Vec<String> = add
                            .iter()
                            .map(|n| RedisHub::key(&inner.settings, n))
                            .collect();
                        match tokio::time::timeout(timeout, sink.subscribe(&channels)).await {
                            Ok(Ok(())) => {}
                            _ => break 'connection,
                        }
                        for name in &add {
                            redis.catch_up(&inner, name).await;
                        }
                        actual.extend(add);
                    }
                    if !remove.is_empty() {
                        let channels: Vec<String> = remove
                            .iter()
                            .map(|n| RedisHub::key(&inner.settings, n))
                            .collect();
                        match tokio::time::timeout(timeout, sink.unsubscribe(&channels)).await {
                            Ok(Ok(())) => {}
                            _ => break 'connection,
                        }
                        for name in &remove {
                            actual.remove(name);
                        }
                    }
                    redis.subscribed.send_replace((generation, actual.clone()));
                    if !lock(&redis.gaps).is_empty() && redis.l2.available() {
                        redis.write_gap_markers(&inner.settings).await;
                    }
                }
                // Messages are handled without a reconcile pass each; a change of the wanted
                // set wakes the task, and a tick catches a flipped switch.
                reconcile = tokio::select! {
                    message = messages.next() => {
                        let Some(message) = message else { break 'connection };
                        let Some(inner) = hub.upgrade() else { return };
                        let channel = message.get_channel_name().to_owned();
                        if let (Some(redis), Ok(payload)) =
                            (inner.redis.as_ref(), message.get_payload::<String>())
                        {
                            redis.on_message(&inner, &channel, &payload).await;
                        }
                        false
                    }
                    _ = wake.notified() => true,
                    _ = tick.tick() => true,
                    _ = closed.changed() => return,
                };
            }
            if let Some(inner) = hub.upgrade()
                && let Some(redis) = inner.redis.as_ref()
            {
                redis.connected.store(false, Ordering::Relaxed);
                redis.subscribed.send_replace((0, HashSet::new()));
                tracing::warn!("event hub lost its Redis subscription; reconnecting");
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
                _ = closed.changed() => return,
            }
        }
    });
}
