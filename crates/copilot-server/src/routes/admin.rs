use axum::extract::State;
use axum::response::{IntoResponse, Response};
use copilot_domain::Principal;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;
use crate::extract::JsonBody;
use crate::state::AppState;

fn service_only(principal: &Principal) -> ApiResult<()> {
    if principal.is_service() {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// The state of every cache, the Redis breaker and hit ratios (services).
#[utoipa::path(operation_id = "getCacheState", get, path = "/v1/admin/cache", tag = "operations",
    responses((status = 200, description = "Cache state", body = CacheStateDoc)))]
pub async fn get_cache(
    State(state): State<AppState>,
    Auth(principal): Auth,
) -> ApiResult<Response> {
    service_only(&principal)?;
    Ok(axum::Json(state.cache.state()).into_response())
}

/// Flips the global cache switch; every instance follows within a second (services). 503
/// `redis_unavailable` when Redis did not take the change (nothing changed then).
#[utoipa::path(operation_id = "setCacheSwitch", put, path = "/v1/admin/cache", tag = "operations",
    request_body = CacheSwitchInput,
    responses((status = 200, description = "Cache state after the change", body = CacheStateDoc)))]
pub async fn put_cache(
    State(state): State<AppState>,
    Auth(principal): Auth,
    JsonBody(body, _): JsonBody,
) -> ApiResult<Response> {
    service_only(&principal)?;
    let CacheSwitchInput { enabled } = CacheSwitchInput::from_json(&body)?;
    if !state.cache.set_enabled(enabled).await {
        tracing::warn!(
            enabled,
            by = principal.actor(),
            "cache switch not changed: Redis did not take it"
        );
        return Err(ApiError::SwitchUnavailable);
    }
    tracing::info!(enabled, by = principal.actor(), "cache switch changed");
    Ok(axum::Json(state.cache.state()).into_response())
}

/// `PUT /v1/admin/cache`.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"enabled": true}))]
pub struct CacheSwitchInput {
    enabled: bool,
}

impl CacheSwitchInput {
    fn from_json(body: &Value) -> ApiResult<Self> {
        let invalid = ApiError::field;
        match body.as_object() {
            Some(map) if map.len() == 1 => match map.get("enabled") {
                Some(Value::Bool(enabled)) => Ok(Self { enabled: *enabled }),
                _ => Err(invalid("enabled", "must be a boolean")),
            },
            _ => Err(invalid("$", "must be {\"enabled\": bool}")),
        }
    }
}

#[allow(dead_code)] // Describes the JSON the cache tier reports (copilot-cache has no schema types).
/// One cache in `GET /v1/admin/cache`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheReportDoc {
    enabled: bool,
    hits: u64,
    misses: u64,
    hit_ratio: f64,
}

#[allow(dead_code)] // Describes the JSON the cache tier reports (copilot-cache has no schema types).
/// `GET /v1/admin/cache`: the global switch, Redis (`ok`, `degraded`, `disabled`), the breaker
/// (`closed`, `open`, `half-open`) and every cache (`policy`, `config`, `conversation`, `auth`,
/// `rateLimiter`, `events`).
#[derive(Deserialize, ToSchema)]
pub struct CacheStateDoc {
    enabled: bool,
    redis: String,
    breaker: String,
    /// Where Redis is; `null` without Redis.
    topology: Option<RedisTopologyDoc>,
    caches: BTreeMap<String, CacheReportDoc>,
}

#[allow(dead_code)] // Describes the JSON the cache tier reports (copilot-cache has no schema types).
/// `kind`: `single` (one server or a managed endpoint), `cluster` or `sentinel`; `tls`:
/// whether the connection is encrypted; `nodes`: `host:port` of the node given (`single`), the
/// primaries serving slots (`cluster`), or the sentinels (`sentinel`); `primary`: behind
/// Sentinel, the primary in use now.
#[derive(Deserialize, ToSchema)]
pub struct RedisTopologyDoc {
    kind: String,
    tls: bool,
    nodes: Vec<String>,
    primary: Option<String>,
}
