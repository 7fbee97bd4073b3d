//! Announcements of committed writes, sent after the commit by one task per store.
//!
//! PostgreSQL serializes every committing transaction that has `NOTIFY`ed on one cluster-wide
//! lock, held through the commit's WAL flush: with a `NOTIFY` in each write, one slow committer
//! (a descheduled backend on a busy CPU) stalled every writer for seconds (the soak of
//! BENCHMARKS.md). So writes no longer notify: a write hands its announcement here once it has
//! committed, and this task sends what has gathered in one autocommitted statement, on a
//! connection of its own (so a busy pool neither delays announcements nor loses a writer its
//! connection). Only one session per instance then contends for the lock, a write never waits
//! for it, and a listener still hears only committed writes. A crash between a commit and its
//! announcement is covered by the change log (re-sent by the cache's drainer). Heartbeats go
//! through the same queue, so a listener that hears its own heartbeat knows every announcement
//! queued before it was sent.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use tokio::sync::mpsc;

/// The channel every write is announced on (and the change feed listens to).
pub const CHANGES_CHANNEL: &str = "copilot_changes";

/// Payloads sent in one statement at most.
const MAX_BATCH: usize = 1_000;
/// A batch not sent within this is sent again (its writes have committed: it is never dropped).
const SEND_WITHIN: Duration = Duration::from_secs(2);
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

pub(crate) struct Notifier {
    connect: PgConnectOptions,
    persistent: bool,
    /// Started on first use, from inside the runtime.
    queue: OnceLock<mpsc::UnboundedSender<String>>,
}

impl Notifier {
    pub(crate) fn new(connect: PgConnectOptions, persistent: bool) -> Arc<Self> {
        Arc::new(Self {
            connect,
            persistent,
            queue: OnceLock::new(),
        })
    }

    /// Queues `payload` for [`CHANGES_CHANNEL`]; call it only once what it announces has
    /// committed. Unbounded, but it only ever holds committed writes not yet sent.
    pub(crate) fn send(&self, payload: String) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.connect.clone(), self.persistent, rx));
            tx
        });
        metrics::gauge!("copilot_store_announcements_queued").increment(1.0);
        // The receiver lives as long as a sender does (see `run`).
        let _ = queue.send(payload);
    }
}

async fn run(connect: PgConnectOptions, persistent: bool, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut conn: Option<PgConnection> = None;
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut wait = RETRY_FIRST;
        loop {
            let sent = tokio::time::timeout(SEND_WITHIN, async {
                if conn.is_none() {
                    conn = Some(connect.connect().await?);
                }
                match conn.as_mut() {
                    Some(c) => send(c, persistent, &batch).await,
                    None => Ok(()),
                }
            })
            .await;
            match sent {
                Ok(Ok(())) => {
                    metrics::counter!("copilot_store_announcements_total", "outcome" => "sent")
                        .increment(batch.len() as u64);
                    break;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "announcing committed writes failed"),
                Err(_) => tracing::warn!("announcing committed writes timed out"),
            }
            // A connection that failed or timed out mid-statement is not reused.
            conn = None;
            metrics::counter!("copilot_store_announcements_total", "outcome" => "retried")
                .increment(batch.len() as u64);
            // Nobody left to announce to (the store was dropped): give up.
            if rx.is_closed() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
        metrics::gauge!("copilot_store_announcements_queued").decrement(batch.len() as f64);
        batch.clear();
    }
}

async fn send(conn: &mut PgConnection, persistent: bool, payloads: &[String]) -> sqlx::Result<()> {
    // One autocommitted statement (a transaction of its own behind a pooler too): the whole
    // batch is delivered at its commit.
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .persistent(persistent)
        .bind(CHANGES_CHANNEL)
        .bind(payloads)
        .execute(conn)
        .await
        .map(drop)
}
