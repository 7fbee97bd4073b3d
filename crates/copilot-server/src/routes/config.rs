use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use copilot_domain::access::{authorize_config_read, authorize_config_write};
use copilot_domain::config::{
    ConfigLevel, ConfigPatch, ConfigPatchInput, EffectiveConfig, StoredPatchView,
};
use copilot_domain::{Principal, UserId};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;
use crate::extract::{
    IfMatch, JsonBody, PathParams, Precondition, Query, tenant_id, user_id, with_etag,
};
use crate::routes::params::{IfMatchHeader, TenantPath, TenantUserPath};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveParams {
    user_id: Option<String>,
}

/// The effective configuration of a user: defaults <- global <- tenant <- user, field by field.
#[utoipa::path(operation_id = "getEffectiveConfig", get, path = "/v1/tenants/{t}/config/effective", tag = "config",
    params(TenantPath,
           ("userId" = Option<String>, Query, description = "Defaults to the caller; another user's: admins and services")),
    responses((status = 200, description = "Effective configuration with sources and versions; its `ETag` changes when any of its levels does",
               body = EffectiveConfig, headers(("ETag" = String, description = "Entity tag; send it back in `If-None-Match` for a 304"))),
              (status = 304, description = "Not modified: `If-None-Match` named the current `ETag`")))]
pub async fn effective(
    State(state): State<AppState>,
    Auth(principal): Auth,
    PathParams(t): PathParams<String>,
    Query(params): Query<EffectiveParams>,
) -> ApiResult<Response> {
    let tenant = tenant_id(&t)?;
    let user: Option<UserId> = match &params.user_id {
        Some(u) => Some(user_id(u)?),
        None => principal.user_id().cloned(),
    };
    let level = match &user {
        Some(u) => ConfigLevel::User(tenant.clone(), u.clone()),
        None => ConfigLevel::Tenant(tenant.clone()),
    };
    authorize_config_read(&principal, &level)?;
    let effective = state
        .store(
            "get_effective",
            state.stores.configs.get_effective(&tenant, user.as_ref()),
        )
        .await?;
    state.rendered.effective.ok(&effective, |e| {
        crate::conditional::effective_etag(&e.versions, e.user_id.as_ref().map(|u| u.as_str()))
    })
}

/// A level's stored version, for `If-Match: *` and lists.
async fn current_version(state: &AppState, level: &ConfigLevel) -> ApiResult<Option<u64>> {
    Ok(state
        .store("get_patch", state.stores.configs.get_patch(level))
        .await?
        .map(|p| p.version))
}

async fn get_level(
    state: &AppState,
    principal: &Principal,
    level: ConfigLevel,
) -> ApiResult<Response> {
    authorize_config_read(principal, &level)?;
    let stored = state
        .store("get_patch", state.stores.configs.get_patch(&level))
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(with_etag(StatusCode::OK, stored.version, &stored.view()))
}

async fn put_level(
    state: &AppState,
    principal: &Principal,
    level: ConfigLevel,
    expected: Precondition,
    body: &serde_json::Value,
) -> ApiResult<Response> {
    authorize_config_write(principal, &level)?;
    let expected = expected.expected(|| current_version(state, &level)).await?;
    let patch = ConfigPatch::from_json(body)?;
    let stored = state
        .store(
            "put_patch",
            state
                .stores
                .configs
                .put_patch(&level, &patch, expected, principal.actor()),
        )
        .await?;
    Ok(with_etag(StatusCode::OK, stored.version, &stored.view()))
}

async fn patch_level(
    state: &AppState,
    principal: &Principal,
    level: ConfigLevel,
    expected: Precondition,
    body: &serde_json::Value,
) -> ApiResult<Response> {
    authorize_config_write(principal, &level)?;
    let expected = expected.expected(|| current_version(state, &level)).await?;
    let stored = state
        .store(
            "merge_patch",
            state
                .stores
                .configs
                .merge_patch(&level, body, expected, principal.actor()),
        )
        .await?;
    Ok(with_etag(StatusCode::OK, stored.version, &stored.view()))
}

async fn delete_level(
    state: &AppState,
    principal: &Principal,
    level: ConfigLevel,
    expected: Precondition,
) -> ApiResult<Response> {
    authorize_config_write(principal, &level)?;
    let expected = expected.expected(|| current_version(state, &level)).await?;
    state
        .store(
            "delete_patch",
            state.stores.configs.delete_patch(&level, expected),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn tenant_level(t: &str) -> ApiResult<ConfigLevel> {
    Ok(ConfigLevel::Tenant(tenant_id(t)?))
}

fn user_level(t: &str, u: &str) -> ApiResult<ConfigLevel> {
    Ok(ConfigLevel::User(tenant_id(t)?, user_id(u)?))
}

/// A handler that writes a whole or merged patch to one config level (see `level_handlers!`).
macro_rules! level_write_handler {
    (
        $name:ident, $method:ident, $id:literal, $doc:literal, $path:literal, [$($param:ty),*],
        ($($arg:ident: $arg_ty:ty),*) => $level:expr, $write:ident, { $($body:tt)* }
    ) => {
        #[doc = $doc]
        #[utoipa::path(operation_id = $id, $method, path = $path, tag = "config",
            params($($param,)* IfMatchHeader),
            $($body)*,
            responses((status = 200, description = "The stored patch", body = StoredPatchView,
                headers(("ETag" = String, description = "\"<version>\"")))))]
        pub async fn $name(
            State(state): State<AppState>,
            Auth(principal): Auth,
            $(PathParams($arg): PathParams<$arg_ty>,)*
            IfMatch(expected): IfMatch,
            JsonBody(body, _): JsonBody,
        ) -> ApiResult<Response> {
            $write(&state, &principal, $level, expected, &body).await
        }
    };
}

/// The four handlers of one config level: utoipa wants one annotated function per path, so
/// each level gets its own, each one line into the shared logic above. `$level` builds the
/// level from the path parameters `$arg`.
macro_rules! level_handlers {
    (
        path: $path:literal,
        params: [$($param:ty),*],
        level: ($($arg:ident: $arg_ty:ty),*) => $level:expr,
        get: $get:ident, $get_id:literal, $get_doc:literal,
        put: $put:ident, $put_id:literal, $put_doc:literal,
        patch: $patch:ident, $patch_id:literal, $patch_doc:literal,
        delete: $delete:ident, $delete_id:literal, $delete_doc:literal $(,)?
    ) => {
        #[doc = $get_doc]
        #[utoipa::path(operation_id = $get_id, get, path = $path, tag = "config",
            params($($param),*),
            responses((status = 200, description = "Stored fields, version, updatedAt, updatedBy", body = StoredPatchView,
                headers(("ETag" = String, description = "\"<version>\""))),
                (status = 304, description = "Not modified: `If-None-Match` named the current `ETag`")))]
        pub async fn $get(
            State(state): State<AppState>,
            Auth(principal): Auth,
            $(PathParams($arg): PathParams<$arg_ty>,)*
        ) -> ApiResult<Response> {
            get_level(&state, &principal, $level).await
        }

        level_write_handler!($put, put, $put_id, $put_doc, $path, [$($param),*],
            ($($arg: $arg_ty),*) => $level, put_level, { request_body = ConfigPatchInput });
        level_write_handler!($patch, patch, $patch_id, $patch_doc, $path, [$($param),*],
            ($($arg: $arg_ty),*) => $level, patch_level,
            { request_body(content = ConfigPatchInput, content_type = "application/merge-patch+json") });

        #[doc = $delete_doc]
        #[utoipa::path(operation_id = $delete_id, delete, path = $path, tag = "config",
            params($($param,)* IfMatchHeader),
            responses((status = 204, description = "Deleted")))]
        pub async fn $delete(
            State(state): State<AppState>,
            Auth(principal): Auth,
            $(PathParams($arg): PathParams<$arg_ty>,)*
            IfMatch(expected): IfMatch,
        ) -> ApiResult<Response> {
            delete_level(&state, &principal, $level, expected).await
        }
    };
}

level_handlers! {
    path: "/v1/config/global",
    params: [],
    level: () => ConfigLevel::Global,
    get: get_global, "getGlobalConfig", " The global level's stored patch (anyone authenticated).",
    put: put_global, "putGlobalConfig", " Replaces the global level's patch (services).",
    patch: patch_global, "patchGlobalConfig", " JSON merge patch (RFC 7396) on the global level (services).",
    delete: delete_global, "deleteGlobalConfig", " Removes the global level's patch (services).",
}

level_handlers! {
    path: "/v1/tenants/{t}/config",
    params: [TenantPath],
    level: (t: String) => tenant_level(&t)?,
    get: get_tenant, "getTenantConfig", " The tenant level's stored patch (tenant members).",
    put: put_tenant, "putTenantConfig", " Replaces the tenant level's patch (tenant admins and services).",
    patch: patch_tenant, "patchTenantConfig", " JSON merge patch on the tenant level (tenant admins and services).",
    delete: delete_tenant, "deleteTenantConfig", " Removes the tenant level's patch (tenant admins and services).",
}

level_handlers! {
    path: "/v1/tenants/{t}/users/{u}/config",
    params: [TenantUserPath],
    level: (tu: (String, String)) => user_level(&tu.0, &tu.1)?,
    get: get_user, "getUserConfig", " A user level's stored patch (that user, tenant admins, services).",
    put: put_user, "putUserConfig", " Replaces a user level's patch (that user, tenant admins, services).",
    patch: patch_user, "patchUserConfig", " JSON merge patch on a user level (that user, tenant admins, services).",
    delete: delete_user, "deleteUserConfig", " Removes a user level's patch (that user, tenant admins, services).",
}
