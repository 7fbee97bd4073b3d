//! HTTP tests against the real server on a real TCP port over a real SQLite file.

mod access_table;
mod cache;
mod cli;
mod cluster;
mod config;
mod conversations;
mod events;
mod fleet;
mod freshness;
mod limits;
mod members;
mod operations;
mod policy;
mod postgres_faults;
mod sentinel;
mod tls;

use std::sync::Arc;

use copilot_cache::ratelimit::RateLimitSettings;
use copilot_cache::{CacheControl, CacheFlags, CacheSettings};
use copilot_domain::TenantId;
use copilot_domain::route::RouterDefaults;
use copilot_server::auth::{Authenticator, TokenRole, issue_token};
use copilot_server::server::ServerLimits;
use copilot_server::settings::JwtSettings;
use copilot_server::state::{AppParts, AppState, ServiceSettings};
use copilot_store::conformance::fresh_postgres_database;
use copilot_store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore, StoreSet};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

pub const SECRET: &str = "test-secret-of-enough-length-0123456789";
pub const TENANT: &str = "acme";
pub const OTHER_TENANT: &str = "globex";

/// The principals the tests act as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Who {
    /// alice, member of acme: owns the conversations under test.
    Owner,
    /// bob, member of acme.
    Colleague,
    /// carol, admin of acme.
    Admin,
    /// dave, admin of globex.
    Stranger,
    /// a service principal.
    Service,
    /// no token at all.
    Nobody,
}

impl Who {
    pub fn user(self) -> &'static str {
        match self {
            Who::Owner => "alice",
            Who::Colleague => "bob",
            Who::Admin => "carol",
            Who::Stranger => "dave",
            Who::Service => "backend",
            Who::Nobody => "",
        }
    }

    pub fn token(self) -> Option<String> {
        let acme = TenantId::parse(TENANT).ok();
        let globex = TenantId::parse(OTHER_TENANT).ok();
        let (tenant, role) = match self {
            Who::Owner | Who::Colleague => (acme, TokenRole::Member),
            Who::Admin => (acme, TokenRole::Admin),
            Who::Stranger => (globex, TokenRole::Admin),
            Who::Service => (None, TokenRole::Service),
            Who::Nobody => return None,
        };
        Some(issue_token(SECRET, tenant.as_ref(), self.user(), role, 3600).expect("token"))
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Response {
    /// Asserts a problem document with this status and code.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert_eq!(self.body["status"], status);
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert_eq!(ct, "application/problem+json");
        self
    }

    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        &self.body
    }

    pub fn etag(&self) -> Option<String> {
        self.headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

pub struct TestServer {
    pub base: String,
    pub store: TestStore,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    pub async fn start_with(require_membership: bool) -> Self {
        // COPILOT_TEST_BACKEND=postgres runs the same HTTP tests over PostgreSQL.
        let store = match std::env::var("COPILOT_TEST_BACKEND").as_deref() {
            Ok("postgres") => {
                let url = fresh_postgres_database().await;
                TestStore::Postgres(Arc::new(
                    PostgresStore::open(PostgresOptions {
                        acquire_timeout: std::time::Duration::from_secs(10),
                        notify_changes: true,
                        ..PostgresOptions::new(url)
                    })
                    .await
                    .expect("postgres"),
                ))
            }
            _ => {
                let dir = tempfile::tempdir().expect("temp dir").keep();
                let url = format!("sqlite://{}/api.db", dir.display());
                TestStore::Sqlite(Arc::new(
                    SqliteStore::open(SqliteOptions::new(url))
                        .await
                        .expect("sqlite"),
                ))
            }
        };
        Self::start_over(store, Self::default_settings(require_membership)).await
    }

    /// In-process caches for every store, as a single instance without Redis runs; a rate
    /// limit no test reaches unless it means to.
    pub fn default_cache() -> CacheSettings {
        CacheSettings {
            flags: CacheFlags {
                conversation: true,
                ..Default::default()
            },
            rate_limit: Some(RateLimitSettings {
                limit: 1_000_000,
                period: std::time::Duration::from_secs(1),
                burst: 1_000_000,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn default_settings(require_membership: bool) -> ServiceSettings {
        ServiceSettings {
            router: RouterDefaults {
                provider: "openai".into(),
                model: "router-model".into(),
                local_provider: "local".into(),
                base_egress_mode: copilot_domain::egress::EgressMode::Enforce,
            },
            max_message_bytes: 1024,
            require_membership,
            store_timeout: std::time::Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            cursor_key: copilot_domain::cursor::CursorKey::derive(SECRET.as_bytes()),
        }
    }

    /// Serves `store` with `settings` on a fresh loopback port.
    pub async fn start_over(store: TestStore, settings: ServiceSettings) -> Self {
        Self::start_cached(store, settings, Self::default_cache()).await
    }

    /// Serves `store` behind the caches `cache` describes.
    pub async fn start_cached(
        store: TestStore,
        settings: ServiceSettings,
        cache: CacheSettings,
    ) -> Self {
        Self::start_limited(store, settings, cache, ServerLimits::default()).await
    }

    /// Serves with explicit connection limits and timeouts.
    pub async fn start_limited(
        store: TestStore,
        settings: ServiceSettings,
        cache: CacheSettings,
        limits: ServerLimits,
    ) -> Self {
        let metrics = copilot_server::telemetry::prometheus();
        // As `serve` decides: one process owns a SQLite file.
        let cache = CacheSettings {
            shared_store: cache.shared_store && matches!(store, TestStore::Postgres(_)),
            ..cache
        };
        let (stores, cache) = CacheControl::build(store.set(), cache).expect("cache");
        cache.follow_switch(std::time::Duration::from_millis(100));
        // Over PostgreSQL, L1 answers once the change feed is heard (tests count its hits).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !cache.l1_trust().0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let state = AppState::new(AppParts {
            cache,
            stores,
            auth: Arc::new(
                Authenticator::new(&JwtSettings::default(), Some(SECRET)).expect("auth"),
            ),
            service: Arc::new(settings),
            metrics,
            rendered: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(copilot_server::serve_with(listener, state, limits, async {
            let _ = rx.await;
        }));
        Self {
            base,
            store,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        who: Who,
        body: Option<Value>,
    ) -> Response {
        self.send(method, path, who, body, &[]).await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        who: Who,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = who.token() {
            req = req.bearer_auth(token);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Response {
            status,
            headers,
            body,
        }
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        who: Who,
        body: Vec<u8>,
        content_type: &str,
    ) -> Response {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = who.token() {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        Response {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str, who: Who) -> Response {
        self.call(Method::GET, path, who, None).await
    }

    pub async fn post(&self, path: &str, who: Who, body: Value) -> Response {
        self.call(Method::POST, path, who, Some(body)).await
    }

    pub async fn put(&self, path: &str, who: Who, body: Value) -> Response {
        self.call(Method::PUT, path, who, Some(body)).await
    }

    pub async fn patch(&self, path: &str, who: Who, body: Value) -> Response {
        self.call(Method::PATCH, path, who, Some(body)).await
    }

    pub async fn delete(&self, path: &str, who: Who) -> Response {
        self.call(Method::DELETE, path, who, None).await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The backend under test, kept so a test can take it away.
#[derive(Clone)]
pub enum TestStore {
    Sqlite(Arc<SqliteStore>),
    Postgres(Arc<PostgresStore>),
}

impl TestStore {
    /// The store itself, behind no cache (with its change feed, as `serve` opens it).
    pub fn set(&self) -> StoreSet {
        match self {
            Self::Sqlite(s) => StoreSet::from_backend(s.clone()),
            Self::Postgres(p) => StoreSet::from_backend(p.clone())
                .with_feed(Arc::new(p.change_feed(None).expect("change feed"))),
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(p) => p.close().await,
        }
    }
}

/// Creates a conversation in acme as `who` and returns its id.
pub async fn conversation(server: &TestServer, who: Who, body: Value) -> String {
    let r = server
        .post(&format!("/v1/tenants/{TENANT}/conversations"), who, body)
        .await;
    r.ok(201)["id"].as_str().expect("id").to_owned()
}
