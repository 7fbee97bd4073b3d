//! The second invalidation path (DESIGN.md 5.1): the store's change feed (PostgreSQL
//! `LISTEN/NOTIFY`, sent in each writing transaction). Every committed write reaches every
//! instance's L1 without Redis. The path counts as healthy once this instance hears its own
//! heartbeat come back through the feed (proof that `LISTEN` is in place end to end), and stops
//! counting when none came back within a second, or the session ends (notices may be lost).

use std::sync::{Arc, Weak};
use std::time::Duration;

use copilot_store::{ChangeFeed, Notice};
use tokio::time::Instant;

use crate::trust::{L1Trust, Path};

const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);
const HEALTHY_WITHIN: Duration = Duration::from_secs(1);
const CONNECT_WITHIN: Duration = Duration::from_secs(2);

/// Listens until `trust` is dropped, reconnecting whenever the session ends.
pub fn spawn_listener(feed: Arc<dyn ChangeFeed>, trust: Weak<L1Trust>, prefix: String) {
    let token = format!("{}-{}", std::process::id(), crate::bus::rand_suffix());
    tokio::spawn(async move {
        loop {
            if trust.strong_count() == 0 {
                return;
            }
            match tokio::time::timeout(CONNECT_WITHIN, feed.listen()).await {
                Ok(Ok(stream)) => {
                    if !listen(&feed, stream, &trust, &prefix, &token).await {
                        return;
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "change feed: cannot listen"),
                Err(_) => tracing::debug!("change feed: no session within the deadline"),
            }
            match trust.upgrade() {
                Some(t) => t.set_path(Path::Postgres, false),
                None => return,
            }
            tokio::time::sleep(HEARTBEAT_EVERY).await;
        }
    });
}

/// One session; `false` once nobody needs the feed any more.
async fn listen(
    feed: &Arc<dyn ChangeFeed>,
    mut stream: Box<dyn copilot_store::ChangeStream>,
    trust: &Weak<L1Trust>,
    prefix: &str,
    token: &str,
) -> bool {
    let started = Instant::now();
    let mut last_heard: Option<Instant> = None;
    let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            notice = stream.next() => {
                let Some(trust) = trust.upgrade() else { return false };
                match notice {
                    Ok(Notice::Changed { subject, version }) => {
                        let (cache, key) = crate::keys::for_change(prefix, &subject);
                        metrics::counter!("copilot_cache_feed_messages_total", "kind" => "change")
                            .increment(1);
                        trust.deliver(cache, &key, version);
                    }
                    Ok(Notice::Heartbeat(t)) if t == token => {
                        last_heard = Some(Instant::now());
                        trust.set_path(Path::Postgres, true);
                    }
                    Ok(Notice::Heartbeat(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "change feed session ended");
                        return true;
                    }
                }
            }
            _ = ticks.tick() => {
                let Some(trust) = trust.upgrade() else { return false };
                let silent_for = last_heard.map_or(started.elapsed(), |at| at.elapsed());
                if silent_for > HEALTHY_WITHIN {
                    trust.set_path(Path::Postgres, false);
                }
                if silent_for > HEALTHY_WITHIN * 3 {
                    // Nothing comes back on this session: start a new one.
                    return true;
                }
                // The probe runs on its own, so a slow database never holds up the notices.
                let (feed, token) = (feed.clone(), token.to_owned());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(HEALTHY_WITHIN, feed.heartbeat(&token)).await;
                });
            }
        }
    }
}
