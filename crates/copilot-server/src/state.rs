use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use copilot_cache::CacheControl;
use copilot_domain::access::authorize_read;
use copilot_domain::conversation::Conversation;
use copilot_domain::route::RouterDefaults;
use copilot_domain::{ConversationId, Principal, TenantId};
use copilot_store::{StoreResult, StoreSet};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Authenticator;
use crate::error::{ApiError, ApiResult};

/// What the handlers need besides the stores.
#[derive(Clone, Debug)]
pub struct ServiceSettings {
    pub router: RouterDefaults,
    pub max_message_bytes: usize,
    pub require_membership: bool,
    /// Deadline of each store call: past it the request answers 503 `store_unavailable`.
    pub store_timeout: Duration,
    /// Peers whose `X-Forwarded-For` is believed (`COPILOT_TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<crate::net::Cidr>,
    /// Authenticates list cursors; the same on every instance of a deployment.
    pub cursor_key: copilot_domain::cursor::CursorKey,
}

/// What every handler shares, behind one `Arc`: axum clones the state for each handler and
/// extractor, and one reference count is cheaper than a dozen.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

pub struct AppParts {
    pub stores: StoreSet,
    pub auth: Arc<Authenticator>,
    pub service: Arc<ServiceSettings>,
    pub metrics: Option<PrometheusHandle>,
    /// The caches in front of `stores`: their state and the kill switch.
    pub cache: Arc<CacheControl>,
    /// Hot reads' bodies, rendered once per cached row.
    pub rendered: Renderings,
}

pub struct Renderings {
    pub policies: crate::rendered::RenderedJson<copilot_domain::policy::StoredPolicy>,
    pub effective: crate::rendered::RenderedJson<copilot_domain::config::EffectiveConfig>,
}

impl Renderings {
    /// After the metrics recorder is installed (handles taken earlier count nothing).
    pub fn new() -> Self {
        Self {
            policies: crate::rendered::RenderedJson::new("policy"),
            effective: crate::rendered::RenderedJson::new("effective_config"),
        }
    }
}

impl Default for Renderings {
    fn default() -> Self {
        Self::new()
    }
}

impl AppParts {
    /// Runs one store call under the store deadline and records its latency
    /// (`copilot_store_duration_seconds{op}`); a call past the deadline is `store_unavailable`.
    /// The cache work after a commit has its own bound on top (`AFTER_COMMIT_WAIT`), so a write
    /// the store committed in time is never answered 503 because Redis was slow.
    pub async fn store<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> ApiResult<T> {
        let started = Instant::now();
        let mut call = std::pin::pin!(call);
        // An L1 hit answers on the first poll: it needs no timer (arming one costs more than
        // the hit itself).
        let outcome = match std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await {
            Poll::Ready(result) => Ok(result),
            Poll::Pending => {
                let deadline = self.service.store_timeout + copilot_cache::tier::AFTER_COMMIT_WAIT;
                tokio::time::timeout(deadline, call).await
            }
        };
        store_duration(op).record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => {
                metrics::counter!("copilot_store_timeouts_total", "op" => op).increment(1);
                tracing::warn!(op, "store call exceeded its deadline");
                Err(ApiError::StoreUnavailable)
            }
        }
    }

    /// The conversation, if `principal` may read it (404 when it does not exist).
    pub async fn readable_conversation(
        &self,
        principal: &Principal,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> ApiResult<Conversation> {
        let conversation = self
            .store(
                "get_conversation",
                self.stores.conversations.get_conversation(tenant, id),
            )
            .await?
            .ok_or(ApiError::NotFound)?;
        authorize_read(principal, &conversation)?;
        Ok(conversation)
    }
}

/// The `copilot_store_duration_seconds{op}` handle of `op`, taken at its first use (after the
/// recorder is installed), so a call answered from L1 does not look its labels up each time.
fn store_duration(op: &'static str) -> metrics::Histogram {
    static HANDLES: OnceLock<quick_cache::sync::Cache<&'static str, metrics::Histogram>> =
        OnceLock::new();
    let handles = HANDLES.get_or_init(|| quick_cache::sync::Cache::new(256));
    if let Some(found) = handles.get(op) {
        return found;
    }
    let histogram = metrics::histogram!("copilot_store_duration_seconds", "op" => op);
    handles.insert(op, histogram.clone());
    histogram
}
