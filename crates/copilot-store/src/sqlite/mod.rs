//! The SQLite backend: the embedded default (DESIGN.md 4.1).
//!
//! WAL mode; one writer connection (SQLite serializes writers anyway, and one connection in
//! the process means no busy-retry storms) whose transactions start `BEGIN IMMEDIATE`, so a
//! second process on the same file waits on the busy timeout instead of failing half-way; a
//! small pool of reader connections that never block the writer.

mod config;
mod conversation;
mod membership;
mod policy;
mod rows;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use copilot_domain::clock::from_micros;
use copilot_domain::{Clock, SystemClock, Timestamp};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::sql::to_u64;
use crate::traits::StoreHealth;
use crate::{Change, ChangeLog, ChangeSubject, StoreError, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How to open a SQLite database.
#[derive(Clone)]
pub struct SqliteOptions {
    /// `sqlite://path/to/file.db` (created if missing) or `sqlite::memory:`.
    pub url: String,
    pub max_readers: u32,
    /// How long a writer waits for another process's lock.
    pub busy_timeout: Duration,
    /// How long a request waits for a connection before `Unavailable`.
    pub acquire_timeout: Duration,
    pub clock: Arc<dyn Clock>,
    /// Record every write in the change log (for a cache that drains it).
    pub record_changes: bool,
}

impl SqliteOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_readers: 4,
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
            record_changes: false,
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    clock: Arc<dyn Clock>,
    record_changes: bool,
}

/// Creates the database file with mode 0600 when it does not exist yet: it holds every tenant's
/// conversations, and SQLite gives its `-wal` and `-shm` files the database file's mode.
fn create_private(path: &std::path::Path) -> StoreResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create the SQLite database {}: {e}",
            path.display()
        ))),
    }
}

/// Versions recorded as applied (none when the table does not exist yet).
async fn applied_versions(pool: &SqlitePool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

impl SqliteStore {
    /// Opens (creating if needed) the database. Does not migrate: call [`SqliteStore::migrate`].
    pub async fn connect(options: SqliteOptions) -> StoreResult<Self> {
        let connect = SqliteConnectOptions::from_str(&options.url)
            .map_err(|e| StoreError::Unavailable(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        let in_memory = options.url.contains(":memory:") || options.url.contains("mode=memory");
        if !in_memory {
            create_private(connect.get_filename())?;
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(u32::from(in_memory))
            .idle_timeout(if in_memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if in_memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot open the SQLite database {}: {e}",
                    connect.get_filename().display()
                ))
            })?;
        // An in-memory database exists once per connection: readers must share the writer.
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(options.max_readers.max(1))
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect.read_only(true))
                .await?
        };
        Ok(Self {
            writer,
            reader,
            clock: options.clock,
            record_changes: options.record_changes,
        })
    }

    /// Opens the database and applies pending migrations.
    pub async fn open(options: SqliteOptions) -> StoreResult<Self> {
        let store = Self::connect(options).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations; returns those it applied (`<version> <description>`).
    pub async fn migrate(&self) -> StoreResult<Vec<String>> {
        let before = applied_versions(&self.writer).await;
        MIGRATOR
            .run(&self.writer)
            .await
            .map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;
        let after = applied_versions(&self.writer).await;
        Ok(crate::migrations_applied(&MIGRATOR, &before, &after))
    }

    /// The writer pool (for backend-specific tests and diagnostics).
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// A write transaction that holds the database write lock from its first statement.
    async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A fresh version for a write to `subject`, recorded in the change log when asked to, in
    /// the caller's transaction.
    async fn stamp(&self, conn: &mut SqliteConnection, subject: ChangeSubject) -> StoreResult<u64> {
        let version = next_version(conn).await?;
        if self.record_changes {
            let (kind, tenant, subject) = subject.columns();
            sqlx::query("INSERT INTO changes (kind, tenant_id, subject, version, created_at) VALUES (?, ?, ?, ?, ?)")
                .bind(kind)
                .bind(tenant)
                .bind(subject)
                .bind(version_param(version)?)
                .bind(micros(self.now()))
                .execute(conn)
                .await?;
        }
        Ok(version)
    }
}

#[async_trait]
impl ChangeLog for SqliteStore {
    async fn changes_before(&self, before: Timestamp, limit: u32) -> StoreResult<Vec<Change>> {
        let rows: Vec<crate::changes::ChangeRow<i64>> = sqlx::query_as(
            "SELECT id, kind, tenant_id, subject, version, created_at FROM changes
             WHERE created_at < ? ORDER BY id LIMIT ?",
        )
        .bind(micros(before))
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        Change::from_rows(rows, from_micros)
    }

    async fn forget_changes(&self, ids: &[i64]) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut sql = sqlx::QueryBuilder::<Sqlite>::new("DELETE FROM changes WHERE id IN (");
        let mut list = sql.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        sql.push(")");
        let mut tx = self.begin_write().await?;
        sql.build().execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The next value of the database's single version counter, inside the caller's transaction.
async fn next_version(conn: &mut SqliteConnection) -> StoreResult<u64> {
    let value: i64 = sqlx::query_scalar(
        "UPDATE version_counter SET value = value + 1 WHERE id = 1 RETURNING value",
    )
    .fetch_one(conn)
    .await?;
    to_u64(value, "version")
}

fn micros(t: Timestamp) -> i64 {
    t.timestamp_micros()
}

fn opt_time(value: Option<i64>) -> Option<Timestamp> {
    value.map(from_micros)
}

fn version_param(v: u64) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Internal(format!("version {v} out of range")))
}

#[async_trait]
impl StoreHealth for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}
