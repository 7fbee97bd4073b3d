//! The PostgreSQL backend: production storage (DESIGN.md 4.1, 4.3).
//!
//! Native types (uuid, timestamptz, jsonb, text[]), every table in schema `copilot`, versions
//! from one sequence, every multi-row write in one transaction, the conversation list served by
//! the expression index that matches its keyset order.
//!
//! Behind PgBouncer/Supavisor in transaction mode, set [`PostgresOptions::transaction_pooler`]:
//! no named prepared statements (the pooler may hand the next statement to another server
//! connection), every read inside its own transaction, and no `extra_float_digits` start-up
//! parameter (PgBouncer refuses it unless told to ignore it).

/// A write's change-log row (when `$5`), as a CTE over `$source` (a CTE with a `version`
/// column), in the write's own statement. Parameters `$1`-`$5`, bound first by
/// [`PostgresStore::bind_change_log`]. (A data-modifying CTE always runs.) Its announcement is
/// sent after the commit, by [`notifier::Notifier`].
macro_rules! change_log_cte {
    ($source:literal) => {
        concat!(
            "c AS (INSERT INTO copilot.changes (kind, tenant_id, subject, version, created_at) ",
            "SELECT $1::text, $2::text, $3::text, ",
            $source,
            ".version, $4::timestamptz FROM ",
            $source,
            " WHERE $5::boolean)"
        )
    };
}

mod config;
mod conversation;
mod feed;
mod membership;
mod notifier;
mod policy;
mod rows;

pub use feed::PostgresChangeFeed;
pub use notifier::CHANGES_CHANNEL;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use copilot_domain::{Clock, SystemClock, Timestamp};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions};
use sqlx::query::Query;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use crate::sql::to_u64;
use crate::traits::StoreHealth;
use crate::{Change, ChangeLog, ChangeSubject, Notice, StoreError, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock key that serializes migrations of one database across instances.
const MIGRATION_LOCK: i64 = 0x636f_7069_6c6f_7401;

#[derive(Clone)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database` (`DATABASE_URL`).
    pub url: String,
    pub max_connections: u32,
    /// How long a read waits for a pooled connection before `Unavailable`. Kept well under the
    /// request deadline so an unreachable database answers 503 quickly.
    pub acquire_timeout: Duration,
    /// How long a write waits for a pooled connection (`None`: as long as a read). Writes may
    /// wait longer: a burst of commits (PostgreSQL serializes notifying commits on one lock, and
    /// a saturated CPU stretches each) should delay a write, not fail it.
    pub write_acquire_timeout: Option<Duration>,
    /// PgBouncer/Supavisor in transaction mode (`COPILOT_PG_TRANSACTION_POOLER`).
    pub transaction_pooler: bool,
    pub clock: Arc<dyn Clock>,
    /// Record every write in the change log (for a cache that drains it).
    pub record_changes: bool,
    /// Announce every write on [`CHANGES_CHANNEL`] (a `NOTIFY` sent once it has committed, so
    /// only committed writes are heard) for the [`PostgresChangeFeed`] of other instances.
    pub notify_changes: bool,
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_millis(500),
            write_acquire_timeout: None,
            transaction_pooler: false,
            clock: Arc::new(SystemClock),
            record_changes: false,
            notify_changes: false,
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

pub struct PostgresStore {
    url: String,
    pool: PgPool,
    /// A read's wait for a connection (the pool's own deadline is the write's, the longer).
    read_acquire_timeout: Duration,
    clock: Arc<dyn Clock>,
    transaction_pooler: bool,
    record_changes: bool,
    notify_changes: bool,
    /// Sends announcements (and the feed's heartbeats) after their commits.
    notifier: Arc<notifier::Notifier>,
}

/// Versions recorded as applied (none when the table does not exist yet).
async fn applied_versions(conn: &mut PgConnection) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM copilot._sqlx_migrations WHERE success")
        .persistent(false)
        .fetch_all(conn)
        .await
        .unwrap_or_default()
}

impl PostgresStore {
    /// Creates the pool without connecting (connections open on first use, so the service
    /// starts, and recovers, whether or not the database is up).
    pub fn connect_lazy(options: PostgresOptions) -> StoreResult<Self> {
        let mut connect = PgConnectOptions::from_str(&options.url)
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("copilot-state");
        if options.transaction_pooler {
            connect = connect.statement_cache_capacity(0).extra_float_digits(None);
        }
        let write_acquire_timeout = options
            .write_acquire_timeout
            .unwrap_or(options.acquire_timeout)
            .max(options.acquire_timeout);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(write_acquire_timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(connect.clone());
        let notifier = notifier::Notifier::new(
            connect.application_name("copilot-state-notifier"),
            !options.transaction_pooler,
        );
        Ok(Self {
            url: options.url.clone(),
            pool,
            read_acquire_timeout: options.acquire_timeout,
            clock: options.clock,
            transaction_pooler: options.transaction_pooler,
            record_changes: options.record_changes,
            notify_changes: options.notify_changes,
            notifier,
        })
    }

    /// Connects and applies pending migrations.
    pub async fn open(options: PostgresOptions) -> StoreResult<Self> {
        let store = Self::connect_lazy(options)?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations; returns those it applied (`<version> <description>`). The
    /// bookkeeping table lives in schema `copilot` too. Migrating needs a session (a lock and
    /// `search_path` held across statements): through a transaction-mode pooler it only checks
    /// that nothing is pending, and otherwise refuses, saying to use the direct URL.
    pub async fn migrate(&self) -> StoreResult<Vec<String>> {
        let mut conn = self.pool.acquire().await?;
        if self.transaction_pooler {
            let applied = applied_versions(&mut conn).await;
            let pending: Vec<String> = MIGRATOR
                .iter()
                .filter(|m| !applied.contains(&m.version))
                .map(|m| format!("{} {}", m.version, m.description))
                .collect();
            return if pending.is_empty() {
                Ok(Vec::new())
            } else {
                Err(StoreError::Unavailable(format!(
                    "{} migration(s) pending ({}), and migrations cannot run through a transaction-mode pooler (COPILOT_PG_TRANSACTION_POOLER=true): run `copilot-state migrate --database-url <direct URL>` against the database itself",
                    pending.len(),
                    pending.join(", ")
                )))
            };
        }
        // Instances starting at once queue here: `CREATE SCHEMA IF NOT EXISTS` itself is not
        // safe against a concurrent twin (a duplicate-key error), and sqlx's own lock comes
        // after it. Session-level, so it is released below whatever happened.
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
        let outcome = async {
            sqlx::raw_sql(
                "CREATE SCHEMA IF NOT EXISTS copilot; SET search_path TO copilot, public",
            )
            .execute(&mut *conn)
            .await?;
            let before = applied_versions(&mut conn).await;
            let result = MIGRATOR.run(&mut *conn).await;
            let after = applied_versions(&mut conn).await;
            result.map_err(|e| StoreError::Internal(format!("migration failed: {e}")))?;
            Ok::<_, StoreError>(crate::migrations_applied(&MIGRATOR, &before, &after))
        }
        .await;
        // The connection goes back to the pool: leave its session as it found it.
        sqlx::raw_sql("RESET search_path")
            .execute(&mut *conn)
            .await?;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
        outcome
    }

    /// The feed of this database's committed writes (they are announced only when
    /// [`PostgresOptions::notify_changes`] is set). `direct_url`: where to `LISTEN` when the
    /// store's URL is a transaction-mode pooler.
    pub fn change_feed(&self, direct_url: Option<&str>) -> StoreResult<PostgresChangeFeed> {
        PostgresChangeFeed::new(
            &self.url,
            direct_url,
            self.notifier.clone(),
            self.read_acquire_timeout.max(Duration::from_secs(1)),
        )
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A fresh version for a write to `subject`, recorded in the change log as configured, in
    /// the caller's transaction (one round trip), and announced once that commits.
    async fn stamp(&self, tx: &mut WriteTx, subject: ChangeSubject) -> StoreResult<u64> {
        let version = if self.record_changes {
            let query = sqlx::query(concat!(
                "WITH s AS (SELECT nextval('copilot.version_seq') AS version), ",
                change_log_cte!("s"),
                " SELECT s.version FROM s"
            ));
            let row = self
                .bind_change_log(query, &subject, self.now())
                .persistent(self.persistent())
                .fetch_one(&mut *tx.tx)
                .await?;
            to_u64(row.try_get("version")?, "version")?
        } else {
            next_version(&mut tx.tx, self.persistent()).await?
        };
        if self.notify_changes {
            tx.announce.push(Notice::encode_change(&subject, version));
        }
        Ok(version)
    }

    /// Binds `$1`-`$5` of [`change_log_cte!`].
    fn bind_change_log<'q>(
        &self,
        query: Query<'q, Postgres, PgArguments>,
        subject: &ChangeSubject,
        now: Timestamp,
    ) -> Query<'q, Postgres, PgArguments> {
        let (kind, tenant, key) = subject.columns();
        query
            .bind(kind)
            .bind(tenant)
            .bind(key)
            .bind(now)
            .bind(self.record_changes)
    }

    /// Announces a write that has committed outside a [`WriteTx`].
    fn announce_committed(&self, subject: &ChangeSubject, version: u64) {
        if self.notify_changes {
            self.notifier.send(Notice::encode_change(subject, version));
        }
    }

    /// Named, cached prepared statements, except behind a transaction pooler.
    fn persistent(&self) -> bool {
        !self.transaction_pooler
    }

    /// A transaction holding the write lock of `subject` (a transaction-scoped advisory lock),
    /// taken before anything else: writers of one key, the first ones included (no row to lock
    /// yet) and deletes, take their versions and commit one after the other, so a key's
    /// version never goes backwards.
    async fn begin_locked(&self, subject: &ChangeSubject) -> StoreResult<WriteTx> {
        let mut tx = self.begin().await?;
        let (kind, tenant, key) = subject.columns();
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .persistent(self.persistent())
            .bind(format!(
                "{kind}|{}|{}",
                tenant.unwrap_or_default(),
                key.unwrap_or_default()
            ))
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// A write transaction; waits for a connection up to the write deadline.
    async fn begin(&self) -> StoreResult<WriteTx> {
        let within = self.pool.options().get_acquire_timeout();
        let tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.pool_error(e, within))?;
        Ok(WriteTx {
            tx,
            announce: Vec::new(),
            notifier: self.notifier.clone(),
        })
    }

    /// A connection for reads: a plain pooled connection, or a transaction behind a pooler;
    /// waits for it at most the read deadline.
    async fn read(&self) -> StoreResult<ReadConn> {
        match tokio::time::timeout(self.read_acquire_timeout, self.statement_conn()).await {
            Ok(conn) => conn,
            Err(_) => Err(self.pool_error(sqlx::Error::PoolTimedOut, self.read_acquire_timeout)),
        }
    }

    /// A connection for one autocommitted write statement: [`Self::read`]'s kind of connection
    /// with the write's (longer) wait.
    async fn write_statement(&self) -> StoreResult<ReadConn> {
        self.statement_conn().await
    }

    async fn statement_conn(&self) -> StoreResult<ReadConn> {
        let within = self.pool.options().get_acquire_timeout();
        Ok(if self.transaction_pooler {
            ReadConn::Transaction(
                self.pool
                    .begin()
                    .await
                    .map_err(|e| self.pool_error(e, within))?,
            )
        } else {
            ReadConn::Plain(
                self.pool
                    .acquire()
                    .await
                    .map_err(|e| self.pool_error(e, within))?,
            )
        })
    }

    /// A pool that had no connection in time says which pool and what its limits are.
    fn pool_error(&self, e: sqlx::Error, within: Duration) -> StoreError {
        match e {
            sqlx::Error::PoolTimedOut => StoreError::Unavailable(format!(
                "PostgreSQL pool: no connection within {} ms (COPILOT_PG_ACQUIRE_TIMEOUT_MS for reads, COPILOT_STORE_TIMEOUT_MS for writes) with {} of {} connections open (COPILOT_PG_POOL_SIZE)",
                within.as_millis(),
                self.pool.size(),
                self.pool.options().get_max_connections()
            )),
            other => other.into(),
        }
    }
}

/// A transaction whose writes are announced once it commits (see [`PostgresStore::stamp`]).
pub(crate) struct WriteTx {
    tx: Transaction<'static, Postgres>,
    announce: Vec<String>,
    notifier: Arc<notifier::Notifier>,
}

impl WriteTx {
    async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        for payload in self.announce {
            self.notifier.send(payload);
        }
        Ok(())
    }
}

impl Deref for WriteTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

enum ReadConn {
    Plain(PoolConnection<Postgres>),
    Transaction(Transaction<'static, Postgres>),
}

impl ReadConn {
    async fn finish(self) -> StoreResult<()> {
        if let Self::Transaction(tx) = self {
            tx.commit().await?;
        }
        Ok(())
    }
}

impl Deref for ReadConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self {
            Self::Plain(c) => c,
            Self::Transaction(t) => t,
        }
    }
}

impl DerefMut for ReadConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            Self::Plain(c) => c,
            Self::Transaction(t) => t,
        }
    }
}

/// The next value of the database's version sequence.
async fn next_version(conn: &mut PgConnection, persistent: bool) -> StoreResult<u64> {
    let value: i64 = sqlx::query_scalar("SELECT nextval('copilot.version_seq')")
        .persistent(persistent)
        .fetch_one(conn)
        .await?;
    to_u64(value, "version")
}

fn to_i64(value: u64) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::Internal(format!("{value} out of range")))
}

#[async_trait]
impl StoreHealth for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.read().await?;
        sqlx::query("SELECT 1")
            .persistent(self.persistent())
            .execute(&mut *conn)
            .await?;
        conn.finish().await
    }
}

#[async_trait]
impl ChangeLog for PostgresStore {
    async fn changes_before(&self, before: Timestamp, limit: u32) -> StoreResult<Vec<Change>> {
        let mut conn = self.read().await?;
        let rows: Vec<crate::changes::ChangeRow<Timestamp>> = sqlx::query_as(
            "SELECT id, kind, tenant_id, subject, version, created_at FROM copilot.changes
             WHERE created_at < $1 ORDER BY id LIMIT $2",
        )
        .persistent(self.persistent())
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
        conn.finish().await?;
        Change::from_rows(rows, |at| at)
    }

    async fn forget_changes(&self, ids: &[i64]) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM copilot.changes WHERE id = ANY($1)")
            .persistent(self.persistent())
            .bind(ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
