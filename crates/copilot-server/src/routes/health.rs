use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

/// How long `/readyz` waits for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` / `ready`.
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub status: &'static str,
    /// `ok`.
    pub store: &'static str,
    /// `ok`, `degraded` or `disabled`.
    pub redis: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(operation_id = "getHealth", get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Response {
    axum::Json(Health { status: "ok" }).into_response()
}

/// Readiness: 200 when the store answers (503 `store_unavailable` otherwise).
#[utoipa::path(operation_id = "getReadiness", get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "Ready", body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, state.stores.health.ping()).await {
        Ok(Ok(())) => axum::Json(Readiness {
            status: "ready",
            store: "ok",
            redis: state.cache.redis_status(),
        })
        .into_response(),
        _ => ApiError::StoreUnavailable.into_response(),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(operation_id = "getMetrics", get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // The hit counters count per thread; bring their Prometheus counters up to now.
    copilot_cache::counting::publish();
    let body = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
