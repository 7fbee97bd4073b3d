//! The path parameters and headers the routes share: each path type both documents its
//! parameters and parses them.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use copilot_cache::events::EventId;
use copilot_domain::{ConversationId, MessageId, TenantId, UserId};
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

use crate::error::{ApiError, ApiResult};
use crate::extract::{PathParams, conversation_id, message_id, tenant_id, user_id};

/// The path of a tenant's resource: `{t}` parsed (400 `invalid_id`).
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// Tenant id
    #[param(rename = "t", value_type = String, pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    pub tenant: TenantId,
}

/// The path of a user's resource in a tenant: `{t}` and `{u}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantUserPath {
    /// Tenant id
    #[param(rename = "t", value_type = String, pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    pub tenant: TenantId,
    /// User id
    #[param(rename = "u", value_type = String, pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    pub user: UserId,
}

/// The path of a conversation: `{t}` and `{id}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConversationPath {
    /// Tenant id
    #[param(rename = "t", value_type = String, pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    pub tenant: TenantId,
    /// Conversation id (UUIDv7)
    #[param(value_type = String, format = Uuid)]
    pub id: ConversationId,
}

/// The path of a message: `{t}`, `{id}` and `{mid}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessagePath {
    /// Tenant id
    #[param(rename = "t", value_type = String, pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    pub tenant: TenantId,
    /// Conversation id (UUIDv7)
    #[param(value_type = String, format = Uuid)]
    pub id: ConversationId,
    /// Message id (UUIDv7)
    #[param(value_type = String, format = Uuid)]
    pub mid: MessageId,
}

/// A path whose segments, in the order the route names them, are each parsed into a typed id
/// (400 `invalid_id` naming the bad one).
trait TypedPath: Sized {
    type Segments: DeserializeOwned + Send;
    fn parse(segments: Self::Segments) -> ApiResult<Self>;
}

impl TypedPath for TenantPath {
    type Segments = String;
    fn parse(t: String) -> ApiResult<Self> {
        Ok(Self {
            tenant: tenant_id(&t)?,
        })
    }
}

impl TypedPath for TenantUserPath {
    type Segments = (String, String);
    fn parse((t, u): (String, String)) -> ApiResult<Self> {
        Ok(Self {
            tenant: tenant_id(&t)?,
            user: user_id(&u)?,
        })
    }
}

impl TypedPath for ConversationPath {
    type Segments = (String, String);
    fn parse((t, id): (String, String)) -> ApiResult<Self> {
        Ok(Self {
            tenant: tenant_id(&t)?,
            id: conversation_id(&id)?,
        })
    }
}

impl TypedPath for MessagePath {
    type Segments = (String, String, String);
    fn parse((t, id, mid): Self::Segments) -> ApiResult<Self> {
        let (tenant, id, mid) = (tenant_id(&t)?, conversation_id(&id)?, message_id(&mid)?);
        Ok(Self { tenant, id, mid })
    }
}

/// Each typed path is an extractor (a foreign trait cannot be implemented for every
/// `TypedPath` at once, hence the macro).
macro_rules! extract_typed_path {
    ($($path:ty),*) => {$(
        impl<S: Send + Sync> FromRequestParts<S> for $path {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
                let PathParams(segments) = PathParams::from_request_parts(parts, state).await?;
                Self::parse(segments)
            }
        }
    )*};
}

extract_typed_path!(TenantPath, TenantUserPath, ConversationPath, MessagePath);

/// The `Last-Event-ID` header of event streams: documents the header and reads it (a value
/// that is no event id is kept as an error: the stream then starts with `resync`).
#[derive(IntoParams)]
#[into_params(names("Last-Event-ID"), parameter_in = Header)]
pub struct LastEventId(
    /// The id of the last event received: the stream starts with what came after it
    #[param(value_type = Option<String>)]
    pub Option<Result<EventId, ()>>,
);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> ApiResult<Self> {
        let last = parts.headers.get("last-event-id");
        Ok(Self(
            last.map(|v| v.to_str().map_err(|_| ()).and_then(str::parse)),
        ))
    }
}
