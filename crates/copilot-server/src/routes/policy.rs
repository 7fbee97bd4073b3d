use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use copilot_domain::TenantId;
use copilot_domain::access::{authorize_tenant, authorize_tenant_admin};
use copilot_domain::policy::{MAX_POLICY_BYTES, PolicyInput, StoredPolicy, TenantLlmPolicy};
use copilot_domain::route::{Route, RouteRequest, resolve_route};

use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;
use crate::extract::{IfMatch, JsonBody, with_etag};
use crate::routes::params::TenantPath;
use crate::routes::responses::{Current, Stored};
use crate::state::AppState;

/// The tenant's LLM routing policy.
#[utoipa::path(operation_id = "getPolicy", get, path = "/v1/tenants/{t}/llm-policy", tag = "policy",
    params(TenantPath),
    responses(Current<StoredPolicy>))]
pub async fn get_policy(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantPath { tenant }: TenantPath,
) -> ApiResult<Response> {
    authorize_tenant(&principal, &tenant)?;
    let policy = state
        .store("get_policy", state.stores.policies.get_policy(&tenant))
        .await?
        .ok_or(ApiError::PolicyNotFound)?;
    state
        .rendered
        .policies
        .ok(&policy, |p| format!("\"{}\"", p.version))
}

/// Creates or replaces the tenant's policy (tenant admins and services).
#[utoipa::path(operation_id = "putPolicy", put, path = "/v1/tenants/{t}/llm-policy", tag = "policy",
    params(TenantPath, IfMatch),
    request_body = PolicyInput,
    responses(Stored<StoredPolicy>))]
pub async fn put_policy(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantPath { tenant }: TenantPath,
    IfMatch(expected): IfMatch,
    JsonBody(body, len): JsonBody,
) -> ApiResult<Response> {
    authorize_tenant_admin(&principal, &tenant)?;
    if len > MAX_POLICY_BYTES {
        return Err(ApiError::PayloadTooLarge(format!(
            "a policy document is at most {MAX_POLICY_BYTES} bytes"
        )));
    }
    let policy = TenantLlmPolicy::from_json(&body, &tenant)?;
    let expected = expected
        .expected(|| current_version(&state, &tenant))
        .await?;
    let stored = state
        .store(
            "put_policy",
            state
                .stores
                .policies
                .put_policy(&policy, expected, principal.actor()),
        )
        .await?;
    Ok(with_etag(StatusCode::OK, stored.version, &stored))
}

/// Deletes the tenant's policy (tenant admins and services).
#[utoipa::path(operation_id = "deletePolicy", delete, path = "/v1/tenants/{t}/llm-policy", tag = "policy",
    params(TenantPath, IfMatch),
    responses((status = 204, description = "Deleted")))]
pub async fn delete_policy(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantPath { tenant }: TenantPath,
    IfMatch(expected): IfMatch,
) -> ApiResult<Response> {
    authorize_tenant_admin(&principal, &tenant)?;
    let expected = expected
        .expected(|| current_version(&state, &tenant))
        .await?;
    match state
        .store(
            "delete_policy",
            state.stores.policies.delete_policy(&tenant, expected),
        )
        .await
    {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(ApiError::NotFound) => Err(ApiError::PolicyNotFound),
        Err(e) => Err(e),
    }
}

/// The stored policy's version, for `If-Match: *` and lists.
async fn current_version(state: &AppState, tenant: &TenantId) -> ApiResult<Option<u64>> {
    Ok(state
        .store("get_policy", state.stores.policies.get_policy(tenant))
        .await?
        .map(|p| p.version))
}

/// Resolves the route (provider, model, egress) one call must use (DESIGN.md 3.3).
#[utoipa::path(operation_id = "resolveRoute", post, path = "/v1/tenants/{t}/llm-route", tag = "policy",
    params(TenantPath),
    request_body = RouteRequest,
    responses((status = 200, description = "The route", body = Route)))]
pub async fn resolve(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantPath { tenant }: TenantPath,
    JsonBody(body, _): JsonBody,
) -> ApiResult<Response> {
    authorize_tenant(&principal, &tenant)?;
    let request = RouteRequest::from_json(&body)?;
    let policy = state
        .store("get_policy", state.stores.policies.get_policy(&tenant))
        .await?;
    let route = resolve_route(
        policy.as_deref(),
        &state.service.router,
        &request,
        &principal,
        &tenant,
    )?;
    Ok(axum::Json(route).into_response())
}
