//! Changes pushed as they commit: every committed write is `NOTIFY`ed on [`CHANGES_CHANNEL`]
//! (see `notifier.rs`), and each instance `LISTEN`s on a connection of its own. `LISTEN` needs
//! a session, so behind a transaction-mode pooler the listener connects to the direct URL
//! (`COPILOT_DIRECT_DATABASE_URL`); `NOTIFY` itself passes through a pooler.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::mpsc;

use super::notifier::{CHANGES_CHANNEL, Notifier};
use crate::changes::{ChangeFeed, ChangeStream, ChangeSubject, Notice};
use crate::{StoreError, StoreResult};

/// Notices buffered between the connection and the listener's reader; past it the session is
/// ended (the reader is told that notices may be lost) rather than memory growing.
const BUFFER: usize = 4_096;

pub struct PostgresChangeFeed {
    /// Where `LISTEN` connects (a session of its own).
    listen: PgConnectOptions,
    connect_within: Duration,
    /// Heartbeats queue behind the announcements they stand for.
    notifier: Arc<Notifier>,
}

impl PostgresChangeFeed {
    /// `direct_url`: where to listen (`None`: the store's own URL, which must then not be a
    /// transaction-mode pooler).
    pub(crate) fn new(
        store_url: &str,
        direct_url: Option<&str>,
        notifier: Arc<Notifier>,
        connect_within: Duration,
    ) -> StoreResult<Self> {
        let url = direct_url.unwrap_or(store_url);
        let listen = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("copilot-state-listener");
        Ok(Self {
            listen,
            connect_within,
            notifier,
        })
    }
}

#[async_trait]
impl ChangeFeed for PostgresChangeFeed {
    async fn listen(&self) -> StoreResult<Box<dyn ChangeStream>> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_within)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(self.listen.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        // A lost connection is reported at once (and this session ends), never papered over.
        listener.eager_reconnect(false);
        listener.listen(CHANGES_CHANNEL).await?;
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(forward(listener, tx));
        Ok(Box::new(PostgresChangeStream { rx }))
    }

    async fn heartbeat(&self, token: &str) -> StoreResult<()> {
        self.notifier.send(Notice::encode_heartbeat(token));
        Ok(())
    }

    async fn announce(&self, subject: &ChangeSubject, version: u64) -> StoreResult<()> {
        self.notifier.send(Notice::encode_change(subject, version));
        Ok(())
    }
}

/// Reads the connection in a task of its own, so the reader may stop waiting at any moment
/// without cutting a message in half.
async fn forward(mut listener: PgListener, tx: mpsc::Sender<StoreResult<Notice>>) {
    loop {
        let received = tokio::select! {
            received = listener.try_recv() => received,
            _ = tx.closed() => return,
        };
        let notice = match received {
            Ok(Some(notification)) => match Notice::decode(notification.payload()) {
                Some(notice) => Ok(notice),
                None => continue,
            },
            Ok(None) => Err(StoreError::Unavailable(
                "the PostgreSQL listener lost its connection".into(),
            )),
            Err(e) => Err(e.into()),
        };
        let end = notice.is_err();
        match tx.try_send(notice) {
            Ok(()) if !end => {}
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // The reader fell behind: it gets the end of the session instead.
                let _ = tx
                    .send(Err(StoreError::Unavailable(
                        "the change listener fell behind".into(),
                    )))
                    .await;
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

struct PostgresChangeStream {
    rx: mpsc::Receiver<StoreResult<Notice>>,
}

#[async_trait]
impl ChangeStream for PostgresChangeStream {
    async fn next(&mut self) -> StoreResult<Notice> {
        self.rx.recv().await.unwrap_or_else(|| {
            Err(StoreError::Unavailable(
                "the PostgreSQL listener stopped".into(),
            ))
        })
    }
}
