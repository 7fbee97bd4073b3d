//! The event hub and the rate limiter over a real Redis, two "instances" (hubs, limiters) in
//! one process: cross-instance delivery, exact replay, replay across a Redis restart (with and
//! without persistence), the unsubscribe/resubscribe race of DESIGN.md 9 item 14, and a rate
//! limit shared by two limiters.

use std::sync::Arc;
use std::time::Duration;

use copilot_cache::events::{EventBody, EventHub, EventId, HubSettings, Subscription, Topic};
use copilot_cache::ratelimit::{RateKey, RateLimitSettings, RateLimiterService};
use copilot_cache::{RedisL2, RedisSettings};
use copilot_domain::{ConversationId, TenantId};

use crate::faults::OwnRedis;
use crate::{fresh_prefix, redis_url};

fn hub(url: &str, prefix: &str) -> EventHub {
    hub_and_l2(url, prefix).0
}

/// A hub and the Redis connection it publishes through.
fn hub_and_l2(url: &str, prefix: &str) -> (EventHub, Arc<RedisL2>) {
    let l2 = Arc::new(RedisL2::new(&RedisSettings::new(url)).expect("redis url"));
    let hub = EventHub::with_redis(
        HubSettings {
            prefix: prefix.to_owned(),
            ..Default::default()
        },
        l2.clone(),
        Box::new(|| true),
    );
    (hub, l2)
}

/// After a restart: until the publishing connection answers again (a publish while Redis is
/// away is lost, and the hub rightly marks the topic for `resync`; these tests publish after).
async fn wait_answers(l2: &RedisL2) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !l2.ping().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn topic() -> Topic {
    Topic::Conversation(
        TenantId::parse("acme").unwrap(),
        ConversationId::parse("01938c6e-7a9f-7cc2-9a4b-1d2e3f405060").unwrap(),
    )
}

/// The next event's data, waiting at most a few seconds.
async fn next(sub: &mut Subscription) -> (EventId, String) {
    let event = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open");
    (event.id, event.body.data.clone())
}

async fn publish(hub: &EventHub, data: &str) -> EventId {
    // Right after a start or restart the hub may still be connecting: retry for a while.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(id) = hub
            .publish(&topic(), EventBody::new("test", data.to_owned()))
            .await
        {
            return id;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis took no publish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_connected(hub: &EventHub) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !hub.redis_healthy() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_instances_and_replay_exactly_after_a_reconnect() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let prefix = fresh_prefix();
    let (a, b) = (hub(&url, &prefix), hub(&url, &prefix));
    wait_connected(&b).await;
    let mut sub = b.subscribe(&topic(), None, None).await;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(publish(&a, &format!("e{i}")).await);
    }
    for (i, id) in sent.iter().enumerate() {
        assert_eq!(next(&mut sub).await, (*id, format!("e{i}")));
    }
    let last = sent[2];
    drop(sub);
    let missed = [publish(&a, "e3").await, publish(&a, "e4").await];
    let mut again = b.subscribe(&topic(), None, Some(Ok(last))).await;
    assert_eq!(next(&mut again).await, (missed[0], "e3".into()));
    assert_eq!(next(&mut again).await, (missed[1], "e4".into()));
    let live = publish(&a, "e5").await;
    assert_eq!(next(&mut again).await, (live, "e5".into()));
    // An id from before the window (or from nowhere): resync.
    let mut lost = b
        .subscribe(&topic(), None, Some(Ok(EventId { ms: 1, seq: 0 })))
        .await;
    let event = tokio::time::timeout(Duration::from_secs(5), lost.next())
        .await
        .unwrap()
        .unwrap();
    assert!(event.is_resync());
}

/// Across a Redis restart: with an append-only file the replay is exact; without persistence
/// the hub cannot know what was lost and says `resync` (never a silent gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_across_a_redis_restart_is_exact_with_persistence_and_resync_without() {
    let binary = redis_url("COPILOT_TEST_REDIS_SERVER");
    for persistent in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_port();
        let mut redis = OwnRedis::start_in(&binary, port, persistent.then(|| dir.path()));
        let prefix = fresh_prefix();
        let ((a, a_l2), b) = (
            hub_and_l2(&redis.url(), &prefix),
            hub(&redis.url(), &prefix),
        );
        wait_connected(&b).await;
        let mut sub = b.subscribe(&topic(), None, None).await;
        publish(&a, "before-1").await;
        let (last, _) = next(&mut sub).await;
        drop(sub);
        redis.restart_gracefully();
        wait_answers(&a_l2).await;
        let after = [publish(&a, "after-1").await, publish(&a, "after-2").await];
        wait_connected(&b).await;
        let mut again = b.subscribe(&topic(), None, Some(Ok(last))).await;
        if persistent {
            assert_eq!(next(&mut again).await, (after[0], "after-1".into()));
            assert_eq!(next(&mut again).await, (after[1], "after-2".into()));
        } else {
            let event = tokio::time::timeout(Duration::from_secs(5), again.next())
                .await
                .unwrap()
                .unwrap();
            assert!(event.is_resync(), "no persistence: resync, got {event:?}");
        }
    }
}

/// A publish whose first attempt ran in Redis but answered after the deadline is retried: the
/// retry must not append the event a second time (CI saw a replay of "two, two, three, four").
/// Redis is paused (SIGSTOP) past the first attempt's deadline, so the retry is queued behind
/// it, then continued: both run, and the stream still holds the event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_retried_after_a_late_answer_is_stored_once() {
    let binary = redis_url("COPILOT_TEST_REDIS_SERVER");
    let redis = OwnRedis::start(&binary, crate::free_port());
    let prefix = fresh_prefix();
    let timeout = Duration::from_millis(300);
    let l2 = Arc::new(
        RedisL2::new(&RedisSettings {
            timeout,
            // The retry must go out, not be refused by an open breaker.
            breaker_failures: 10,
            ..RedisSettings::new(redis.url())
        })
        .expect("redis url"),
    );
    let settings = HubSettings {
        prefix: prefix.clone(),
        ..Default::default()
    };
    let a = EventHub::with_redis(settings, l2.clone(), Box::new(|| true));
    wait_answers(&l2).await;
    let first = publish(&a, "first").await;

    redis.signal("-STOP");
    let publishing = {
        let a = a.clone();
        tokio::spawn(async move {
            a.publish(&topic(), EventBody::new("test", "once".to_owned()))
                .await
        })
    };
    // The first attempt times out; the retry is written behind it on the same connection.
    tokio::time::sleep(timeout + timeout / 2).await;
    redis.signal("-CONT");
    let _ = publishing.await;
    wait_answers(&l2).await;
    let last = publish(&a, "last").await;

    let b = hub(&redis.url(), &prefix);
    wait_connected(&b).await;
    let mut replay = b.subscribe(&topic(), None, Some(Ok(first))).await;
    let mut seen = Vec::new();
    loop {
        let (id, data) = next(&mut replay).await;
        seen.push(data);
        if id == last {
            break;
        }
    }
    assert_eq!(seen, ["once", "last"]);
}

/// A subscriber that stays connected while Redis restarts (with persistence) gets every event
/// published after Redis is back, in order: the hub resubscribes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscriber_survives_a_redis_restart() {
    let binary = redis_url("COPILOT_TEST_REDIS_SERVER");
    let dir = tempfile::tempdir().unwrap();
    let port = crate::free_port();
    let mut redis = OwnRedis::start_in(&binary, port, Some(dir.path()));
    let prefix = fresh_prefix();
    let ((a, a_l2), b) = (
        hub_and_l2(&redis.url(), &prefix),
        hub(&redis.url(), &prefix),
    );
    wait_connected(&b).await;
    let mut sub = b.subscribe(&topic(), None, None).await;
    publish(&a, "one").await;
    assert_eq!(next(&mut sub).await.1, "one");
    redis.restart_gracefully();
    wait_answers(&a_l2).await;
    publish(&a, "two").await;
    publish(&a, "three").await;
    assert_eq!(next(&mut sub).await.1, "two");
    assert_eq!(next(&mut sub).await.1, "three");
}

/// DESIGN.md section 9, item 14: an event-hub unsubscribe racing a resubscribe silently stopped
/// cross-instance events. Here the last subscriber of a topic leaves while a new one joins, many
/// times over; every time the new one still gets the next event from the other instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_14_unsubscribe_racing_resubscribe_never_drops_a_live_subscriber() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let prefix = fresh_prefix();
    let (a, b) = (hub(&url, &prefix), hub(&url, &prefix));
    wait_connected(&b).await;
    let mut old = b.subscribe(&topic(), None, None).await;
    for round in 0..50 {
        let b2 = b.clone();
        let leaving = tokio::spawn(async move { drop(old) });
        let joining = tokio::spawn(async move { b2.subscribe(&topic(), None, None).await });
        leaving.await.unwrap();
        let mut new = joining.await.unwrap();
        // Let the subscriber task see the unsubscribe too (the race is now in Redis' hands).
        if round % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let data = format!("round-{round}");
        publish(&a, &data).await;
        let (_, got) = next(&mut new).await;
        assert_eq!(got, data, "round {round}");
        old = new;
    }
}

fn limiter(url: Option<&str>, prefix: &str, limit: u32, burst: u32) -> Arc<RateLimiterService> {
    let l2 = url.map(|u| {
        let mut settings = RedisSettings::new(u);
        settings.timeout = Duration::from_millis(100);
        Arc::new(RedisL2::new(&settings).expect("redis url"))
    });
    RateLimiterService::new(
        RateLimitSettings {
            limit,
            period: Duration::from_secs(60),
            burst,
            instances: 2,
            prefix: prefix.to_owned(),
            ..Default::default()
        },
        l2,
        Box::new(|| true),
    )
}

/// Two limiters over one Redis are one limit: requests split between them are admitted up to
/// the burst (plus what the rate refills meanwhile), not twice that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_shared_by_two_instances_is_one_limit() {
    let url = redis_url("COPILOT_TEST_REDIS_URL");
    let prefix = fresh_prefix();
    let (a, b) = (
        limiter(Some(&url), &prefix, 60, 20),
        limiter(Some(&url), &prefix, 60, 20),
    );
    let key = RateKey::Principal {
        tenant: "acme".into(),
        subject: "alice".into(),
    };
    let started = tokio::time::Instant::now();
    let mut allowed = 0;
    for i in 0..200 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        if limiter.check(&key).await.allowed {
            allowed += 1;
        }
    }
    let refilled = started.elapsed().as_secs() as u32 + 1;
    assert!(
        (20..=20 + refilled).contains(&allowed),
        "allowed {allowed} of 200 (burst 20, one per second)"
    );
    assert_eq!(a.backend(), "redis");
    let denied = a.check(&key).await;
    assert!(!denied.allowed && denied.retry_after > Duration::ZERO);
    // Another key has its own budget.
    let other = RateKey::Peer([192, 0, 2, 1].into());
    assert!(b.check(&other).await.allowed);
}

/// DESIGN.md section 9, item 11 (in part): with Redis down the limiter allowed everything.
/// Here Redis is a port nobody listens on: each instance allows its share (half the burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_11_with_redis_down_requests_are_still_limited() {
    let dead = crate::dead_redis_url();
    let limiter = limiter(Some(&dead), &fresh_prefix(), 60, 20);
    let key = RateKey::Principal {
        tenant: "acme".into(),
        subject: "alice".into(),
    };
    let mut allowed = 0;
    for _ in 0..100 {
        if limiter.check(&key).await.allowed {
            allowed += 1;
        }
    }
    assert!((10..=11).contains(&allowed), "allowed {allowed}");
    assert_eq!(limiter.backend(), "in-process");
}
