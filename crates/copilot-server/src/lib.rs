//! The copilot-state HTTP service (DESIGN.md section 6) and the pieces of its command line.

pub mod app;
pub mod auth;
pub mod conditional;
pub mod error;
pub mod extract;
pub mod net;
pub mod openapi;
pub mod rendered;
pub mod routes;
pub mod secret;
pub mod server;
pub mod settings;
pub mod state;
pub mod telemetry;
pub mod verified_tokens;

use std::future::Future;
use std::sync::Arc;

use copilot_store::{
    PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, StoreError, StoreSet,
};
use tokio::net::TcpListener;

use crate::settings::Settings;

/// Opens the configured store (migrating it unless told not to).
pub async fn open_stores(settings: &Settings) -> Result<StoreSet, StoreError> {
    open_and_migrate(settings).await.map(|(stores, _)| stores)
}

/// Opens the configured store, migrating it unless told not to; also returns the migrations
/// applied now (`<version> <description>`).
pub async fn open_and_migrate(settings: &Settings) -> Result<(StoreSet, Vec<String>), StoreError> {
    if settings.is_sqlite() {
        // With Redis, writes are recorded in the change log, so an invalidation a crash lost is
        // re-sent by the cache's drainer.
        let options = SqliteOptions {
            record_changes: settings.cache.redis.is_some(),
            ..SqliteOptions::new(&settings.database_url)
        };
        let store = SqliteStore::connect(options).await?;
        let applied = if settings.migrate {
            store.migrate().await?
        } else {
            Vec::new()
        };
        Ok((StoreSet::from_backend(Arc::new(store)), applied))
    } else {
        let mut options = PostgresOptions::new(&settings.database_url);
        options.max_connections = settings.postgres.pool_size;
        options.acquire_timeout = settings.postgres.acquire_timeout;
        // A write may wait for a connection as long as the store deadline: a burst of commits
        // delays writes instead of failing them (the soak of BENCHMARKS.md).
        options.write_acquire_timeout = Some(settings.store_timeout);
        options.transaction_pooler = settings.postgres.transaction_pooler;
        let direct_url = settings.postgres.direct_url.as_deref();
        // `LISTEN` needs a session: through a transaction-mode pooler only with the direct URL.
        let has_feed = !settings.postgres.transaction_pooler || direct_url.is_some();
        // Every write is announced to the other instances' L1 (the invalidation path that
        // does not need Redis), after its commit; the change log covers a crash in between
        // (the drainer announces what it holds again, and re-sends it through Redis).
        options.notify_changes = true;
        options.record_changes = settings.cache.redis.is_some() || has_feed;
        let store = PostgresStore::connect_lazy(options.clone())?;
        let applied = match (settings.migrate, direct_url) {
            (false, _) => Vec::new(),
            // Behind a pooler, migrations run on the database itself when its URL is given.
            (true, Some(direct)) if settings.postgres.transaction_pooler => {
                let migrator = PostgresStore::connect_lazy(PostgresOptions {
                    url: direct.to_owned(),
                    max_connections: 1,
                    transaction_pooler: false,
                    ..options
                })?;
                let applied = migrator.migrate().await;
                migrator.close().await;
                applied?
            }
            (true, _) => store.migrate().await?,
        };
        let feed = if !has_feed {
            tracing::warn!(
                "COPILOT_PG_TRANSACTION_POOLER without COPILOT_DIRECT_DATABASE_URL: no change feed, so L1 is trusted only while the Redis bus is healthy"
            );
            None
        } else {
            Some(store.change_feed(direct_url)?)
        };
        let stores = StoreSet::from_backend(Arc::new(store));
        Ok((
            match feed {
                Some(feed) => stores.with_feed(Arc::new(feed)),
                None => stores,
            },
            applied,
        ))
    }
}

/// Serves `state` on `listener` with the default limits (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    state: state::AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, server::ServerLimits::default(), shutdown).await
}

/// Serves `state` on `listener` until `shutdown` completes, then ends the event streams (open
/// SSE responses would otherwise hold the drain forever) and drains in-flight requests for at
/// most `limits.drain`.
pub async fn serve_with(
    listener: TcpListener,
    state: state::AppState,
    limits: server::ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let events = state.cache.events().clone();
    server::run(listener, app::router(state), limits, shutdown, move || {
        events.close()
    })
    .await
}
