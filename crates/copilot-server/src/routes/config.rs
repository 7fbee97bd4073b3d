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
use crate::extract::{IfMatch, JsonBody, Precondition, Query, user_id, with_etag};
use crate::routes::params::{TenantPath, TenantUserPath};
use crate::routes::responses::{Current, Stored};
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
    TenantPath { tenant }: TenantPath,
    Query(params): Query<EffectiveParams>,
) -> ApiResult<Response> {
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

/// How a write changes a level: a whole new patch (`PUT`) or a JSON merge patch (`PATCH`).
enum LevelWrite {
    Replace,
    Merge,
}

async fn write_level(
    state: &AppState,
    principal: &Principal,
    (level, how): (ConfigLevel, LevelWrite),
    expected: Precondition,
    body: &serde_json::Value,
) -> ApiResult<Response> {
    let expected = writable_version(state, principal, &level, expected).await?;
    let configs = &state.stores.configs;
    let stored = match how {
        LevelWrite::Replace => {
            let patch = ConfigPatch::from_json(body)?;
            let put = configs.put_patch(&level, &patch, expected, principal.actor());
            state.store("put_patch", put).await?
        }
        LevelWrite::Merge => {
            let merge = configs.merge_patch(&level, body, expected, principal.actor());
            state.store("merge_patch", merge).await?
        }
    };
    Ok(with_etag(StatusCode::OK, stored.version, &stored.view()))
}

/// Checks that `principal` may write `level`; the version the write must find (or 412).
async fn writable_version(
    state: &AppState,
    principal: &Principal,
    level: &ConfigLevel,
    expected: Precondition,
) -> ApiResult<Option<u64>> {
    authorize_config_write(principal, level)?;
    expected.expected(|| current_version(state, level)).await
}

async fn delete_level(
    state: &AppState,
    principal: &Principal,
    level: ConfigLevel,
    expected: Precondition,
) -> ApiResult<Response> {
    let expected = writable_version(state, principal, &level, expected).await?;
    state
        .store(
            "delete_patch",
            state.stores.configs.delete_patch(&level, expected),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A handler that writes a whole or merged patch to one config level (see `level_handlers!`).
macro_rules! level_write_handler {
    (
        $name:ident, $method:ident, $id:expr, $summary:expr, $path:literal,
        ($($arg_ty:ident { $($field:ident),* })?) => $level:expr, $write:expr, { $($body:tt)* }
    ) => {
        #[utoipa::path(operation_id = $id, summary = $summary, $method, path = $path, tag = "config",
            params($($arg_ty,)? IfMatch),
            $($body)*,
            responses(Stored<StoredPatchView>))]
        pub async fn $name(
            State(state): State<AppState>,
            Auth(principal): Auth,
            $($arg_ty { $($field),* }: $arg_ty,)?
            IfMatch(expected): IfMatch,
            JsonBody(body, _): JsonBody,
        ) -> ApiResult<Response> {
            write_level(&state, &principal, ($level, $write), expected, &body).await
        }
    };
}

/// The four handlers of one config level: utoipa wants one annotated function per path, so
/// each level gets its own, each one line into the shared logic above. `$level` is built from
/// the typed path `$arg_ty`'s fields; operation ids and summaries from the level's `$Name` and `$level_name`
/// and who may read and write it.
macro_rules! level_handlers {
    (
        $path:literal, ($($arg_ty:ident { $($field:ident),* })?) => $level:expr,
        $Name:literal, $level_name:literal, readers: $readers:literal, writers: $writers:literal,
        [$get:ident, $put:ident, $patch:ident, $delete:ident] $(,)?
    ) => {
        #[utoipa::path(operation_id = concat!("get", $Name, "Config"),
            summary = concat!("The stored patch of ", $level_name, " (", $readers, ")."),
            get, path = $path, tag = "config",
            params($($arg_ty)?),
            responses(Current<StoredPatchView>))]
        pub async fn $get(
            State(state): State<AppState>,
            Auth(principal): Auth,
            $($arg_ty { $($field),* }: $arg_ty,)?
        ) -> ApiResult<Response> {
            get_level(&state, &principal, $level).await
        }

        level_write_handler!($put, put, concat!("put", $Name, "Config"),
            concat!("Replaces the patch of ", $level_name, " (", $writers, ")."), $path,
            ($($arg_ty { $($field),* })?) => $level, LevelWrite::Replace, { request_body = ConfigPatchInput });
        level_write_handler!($patch, patch, concat!("patch", $Name, "Config"),
            concat!("JSON merge patch (RFC 7396) on ", $level_name, " (", $writers, ")."), $path,
            ($($arg_ty { $($field),* })?) => $level, LevelWrite::Merge,
            { request_body(content = ConfigPatchInput, content_type = "application/merge-patch+json") });

        #[utoipa::path(operation_id = concat!("delete", $Name, "Config"),
            summary = concat!("Removes the patch of ", $level_name, " (", $writers, ")."),
            delete, path = $path, tag = "config",
            params($($arg_ty,)? IfMatch),
            responses((status = 204, description = "Deleted")))]
        pub async fn $delete(
            State(state): State<AppState>,
            Auth(principal): Auth,
            $($arg_ty { $($field),* }: $arg_ty,)?
            IfMatch(expected): IfMatch,
        ) -> ApiResult<Response> {
            delete_level(&state, &principal, $level, expected).await
        }
    };
}

level_handlers!("/v1/config/global", () => ConfigLevel::Global,
    "Global", "the global level", readers: "anyone authenticated", writers: "services",
    [get_global, put_global, patch_global, delete_global]);

level_handlers!("/v1/tenants/{t}/config",
    (TenantPath { tenant }) => ConfigLevel::Tenant(tenant),
    "Tenant", "the tenant level", readers: "tenant members", writers: "tenant admins and services",
    [get_tenant, put_tenant, patch_tenant, delete_tenant]);

level_handlers!("/v1/tenants/{t}/users/{u}/config",
    (TenantUserPath { tenant, user }) => ConfigLevel::User(tenant, user),
    "User", "a user level", readers: "that user, tenant admins, services",
    writers: "that user, tenant admins, services",
    [get_user, put_user, patch_user, delete_user]);
