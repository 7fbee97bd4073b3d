use axum::extract::State;
use axum::response::{IntoResponse, Response};
use copilot_domain::Principal;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;
use crate::extract::JsonBody;
use crate::openapi::{CacheStateDoc, CacheSwitchInput};
use crate::state::AppState;

fn service_only(principal: &Principal) -> ApiResult<()> {
    if principal.is_service() {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// The state of every cache, the Redis breaker and hit ratios (services).
#[utoipa::path(get, path = "/v1/admin/cache", tag = "operations",
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
#[utoipa::path(put, path = "/v1/admin/cache", tag = "operations",
    request_body = CacheSwitchInput,
    responses((status = 200, description = "Cache state after the change", body = CacheStateDoc)))]
pub async fn put_cache(
    State(state): State<AppState>,
    Auth(principal): Auth,
    JsonBody(body, _): JsonBody,
) -> ApiResult<Response> {
    service_only(&principal)?;
    let enabled = match body.as_object() {
        Some(map) if map.len() == 1 => match map.get("enabled") {
            Some(Value::Bool(b)) => *b,
            _ => {
                return Err(ApiError::Validation(vec![copilot_domain::FieldError::new(
                    "enabled",
                    "must be a boolean",
                )]));
            }
        },
        _ => {
            return Err(ApiError::Validation(vec![copilot_domain::FieldError::new(
                "$",
                "must be {\"enabled\": bool}",
            )]));
        }
    };
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
