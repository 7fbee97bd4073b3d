use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use copilot_domain::access::authorize_tenant_admin;
use copilot_domain::membership::{Membership, MembershipInput};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiResult;
use crate::extract::Auth;
use crate::extract::JsonBody;
use crate::routes::params::{TenantPath, TenantUserPath};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct MemberList {
    pub items: Vec<Membership>,
}

/// Every membership of the tenant, ordered by user id (tenant admins and services).
#[utoipa::path(operation_id = "listMembers", get, path = "/v1/tenants/{t}/members", tag = "members",
    params(TenantPath),
    responses((status = 200, description = "Memberships", body = MemberList)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantPath { tenant }: TenantPath,
) -> ApiResult<Response> {
    authorize_tenant_admin(&principal, &tenant)?;
    let items = state
        .store("list_members", state.stores.members.list_members(&tenant))
        .await?;
    Ok(axum::Json(MemberList { items }).into_response())
}

/// Creates or changes a membership (tenant admins and services).
#[utoipa::path(operation_id = "putMember", put, path = "/v1/tenants/{t}/members/{u}", tag = "members",
    params(TenantUserPath),
    request_body = MembershipInput,
    responses((status = 200, description = "The membership", body = Membership)))]
pub async fn put(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantUserPath { tenant, user }: TenantUserPath,
    JsonBody(body, _): JsonBody,
) -> ApiResult<Response> {
    authorize_tenant_admin(&principal, &tenant)?;
    let input = MembershipInput::from_json(&body)?;
    let membership = state
        .store(
            "put_membership",
            state.stores.members.put_membership(&tenant, &user, &input),
        )
        .await?;
    crate::routes::events::publish_member_change(
        state.cache.events(),
        &tenant,
        &user,
        membership.is_active(),
    )
    .await;
    Ok(axum::Json(membership).into_response())
}

/// Removes a membership (tenant admins and services).
#[utoipa::path(operation_id = "deleteMember", delete, path = "/v1/tenants/{t}/members/{u}", tag = "members",
    params(TenantUserPath),
    responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantUserPath { tenant, user }: TenantUserPath,
) -> ApiResult<Response> {
    authorize_tenant_admin(&principal, &tenant)?;
    state
        .store(
            "delete_membership",
            state.stores.members.delete_membership(&tenant, &user),
        )
        .await?;
    crate::routes::events::publish_member_change(state.cache.events(), &tenant, &user, false).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
