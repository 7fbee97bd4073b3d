//! Announcements of committed writes, sent after the commit by one task per store.
//!
//! PostgreSQL serializes every committing transaction that has `NOTIFY`ed on one cluster-wide
//! lock, held through the commit's WAL flush: with a `NOTIFY` in each write, one slow committer
//! (a descheduled backend on a busy CPU) stalled every writer for seconds (the soak of
//! BENCHMARKS.md). So writes no longer notify: a write hands its announcement here once it has
//! committed, and this task sends what has gathered in one autocommitted statement. Only one
//! session per instance then contends for the lock, a write never waits for it, and a listener
//! still hears only committed writes. A crash between a commit and its announcement is covered
//! by the change log (re-sent by the cache's drainer). Heartbeats go through the same queue, so
//! a listener that hears its own heartbeat knows every announcement queued before it was sent.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;

use super::feed::CHANGES_CHANNEL;

/// Payloads sent in one statement at most.
const MAX_BATCH: usize = 1_000;
/// A batch not sent within this is sent again (its writes have committed: it is never dropped).
const SEND_WITHIN: Duration = Duration::from_secs(2);
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

pub(crate) struct Notifier {
    pool: PgPool,
    persistent: bool,
    /// Started on first use, from inside the runtime.
    queue: OnceLock<mpsc::UnboundedSender<String>>,
}

impl Notifier {
    pub(crate) fn new(pool: PgPool, persistent: bool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            persistent,
            queue: OnceLock::new(),
        })
    }

    /// Queues `payload` for [`CHANGES_CHANNEL`]; call it only once what it announces has
    /// committed. Unbounded, but it only ever holds committed writes not yet sent.
    pub(crate) fn send(&self, payload: String) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(self.pool.clone(), self.persistent, rx));
            tx
        });
        metrics::gauge!("copilot_store_announcements_queued").increment(1.0);
        // The receiver lives as long as a sender does (see `run`).
        let _ = queue.send(payload);
    }
}

async fn run(pool: PgPool, persistent: bool, mut rx: mpsc::UnboundedReceiver<String>) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut wait = RETRY_FIRST;
        loop {
            match tokio::time::timeout(SEND_WITHIN, send(&pool, persistent, &batch)).await {
                Ok(Ok(())) => {
                    metrics::counter!("copilot_store_announcements_total", "outcome" => "sent")
                        .increment(batch.len() as u64);
                    break;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "announcing committed writes failed"),
                Err(_) => tracing::warn!("announcing committed writes timed out"),
            }
            metrics::counter!("copilot_store_announcements_total", "outcome" => "retried")
                .increment(batch.len() as u64);
            // Nobody left to announce to (the store was closed or dropped): give up.
            if pool.is_closed() || rx.is_closed() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(RETRY_MAX);
        }
        metrics::gauge!("copilot_store_announcements_queued").decrement(batch.len() as f64);
        batch.clear();
    }
}

async fn send(pool: &PgPool, persistent: bool, payloads: &[String]) -> sqlx::Result<()> {
    // One autocommitted statement (a transaction of its own behind a pooler too): the whole
    // batch is delivered at its commit.
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .persistent(persistent)
        .bind(CHANGES_CHANNEL)
        .bind(payloads)
        .execute(pool)
        .await
        .map(drop)
}
