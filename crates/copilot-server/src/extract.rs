//! Request extractors whose every rejection is a problem document with a stable `code`.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, ETAG, IF_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use copilot_domain::{ConversationId, MessageId, TenantId, UserId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use axum::http::header::AUTHORIZATION;
use copilot_domain::{Principal, TenantRole};

use crate::auth::{VerifiedPrincipal, bearer_token};
use crate::error::ApiError;
use crate::state::AppState;

/// Request bodies over this are refused before parsing.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// A JSON body, read whatever its content type (`application/json`,
/// `application/merge-patch+json`, ...). Too large: 413; malformed: 400.
pub struct JsonBody(pub Value, pub usize);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let too_large =
            || ApiError::PayloadTooLarge(format!("request body exceeds {MAX_BODY_BYTES} bytes"));
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|e| {
                if caused_by_timeout(&*e.into_inner()) {
                    ApiError::RequestTimeout
                } else {
                    too_large()
                }
            })?;
        if bytes.is_empty() {
            return Err(ApiError::InvalidRequest("a JSON body is required".into()));
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::InvalidRequest(format!("malformed JSON: {e}")))?;
        copilot_domain::json::reject_nul_characters(&value)?;
        Ok(Self(value, bytes.len()))
    }
}

/// Whether a body error comes from the body read timeout (somewhere down its source chain).
fn caused_by_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Query parameters; a bad one is 400 `invalid_request`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e| ApiError::InvalidRequest(e.body_text()))
    }
}

/// Raw path segments; turned into typed ids by the helpers below (400 `invalid_id`).
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|e| ApiError::InvalidId(e.body_text()))
    }
}

pub fn tenant_id(s: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(s).map_err(|e| ApiError::InvalidId(format!("tenant id {e}")))
}

pub fn user_id(s: &str) -> Result<UserId, ApiError> {
    UserId::parse(s).map_err(|e| ApiError::InvalidId(format!("user id {e}")))
}

pub fn conversation_id(s: &str) -> Result<ConversationId, ApiError> {
    ConversationId::parse(s).map_err(|e| ApiError::InvalidId(format!("conversation id {e}")))
}

pub fn message_id(s: &str) -> Result<MessageId, ApiError> {
    MessageId::parse(s).map_err(|e| ApiError::InvalidId(format!("message id {e}")))
}

/// An `If-Match` precondition (RFC 9110 13.1.1), parsed once for every versioned resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No `If-Match`: write unconditionally.
    None,
    /// One strong validator `"<version>"` (a bare number is accepted too): the store checks it
    /// atomically.
    Exact(u64),
    /// `*`: the resource must exist.
    Any,
    /// Several strong validators: the current version must be one of them.
    OneOf(Vec<u64>),
    /// Only weak (`W/"..."`) or unparsable validators: strong comparison never matches.
    Never,
}

impl Precondition {
    /// The version the write must find (handed to the store, which compares atomically), or
    /// 412. `current` reads the resource's version; only `*` and lists need it.
    pub async fn expected<F>(self, current: impl FnOnce() -> F) -> Result<Option<u64>, ApiError>
    where
        F: Future<Output = Result<Option<u64>, ApiError>>,
    {
        match self {
            Self::None => Ok(None),
            Self::Exact(version) => Ok(Some(version)),
            Self::Never => Err(ApiError::PreconditionFailed),
            Self::Any => current()
                .await?
                .map(Some)
                .ok_or(ApiError::PreconditionFailed),
            Self::OneOf(versions) => match current().await? {
                Some(v) if versions.contains(&v) => Ok(Some(v)),
                _ => Err(ApiError::PreconditionFailed),
            },
        }
    }

    fn parse(values: &[&str]) -> Self {
        let joined = values.join(",");
        if joined.trim() == "*" {
            return Self::Any;
        }
        let strong: Vec<u64> = joined
            .split(',')
            .map(str::trim)
            .filter(|tag| !tag.starts_with("W/"))
            .filter_map(|tag| {
                let bare = tag
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    .unwrap_or(tag);
                bare.parse::<u64>().ok()
            })
            .collect();
        match strong.as_slice() {
            [] => Self::Never,
            [one] => Self::Exact(*one),
            _ => Self::OneOf(strong),
        }
    }
}

/// The request's `If-Match`: documents the header and parses it.
#[derive(utoipa::IntoParams)]
#[into_params(names("If-Match"), parameter_in = Header)]
pub struct IfMatch(
    /// Expected version: "<version>"
    #[param(value_type = Option<String>, pattern = r#"^(\*|(W/)?"?[0-9]{1,19}"?)$"#)]
    pub Precondition,
);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let values: Vec<&str> = parts
            .headers
            .get_all(IF_MATCH)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        if values.is_empty() {
            return Ok(Self(Precondition::None));
        }
        Ok(Self(Precondition::parse(&values)))
    }
}

/// A JSON response with `ETag: "<version>"`.
pub fn with_etag<T: Serialize>(status: StatusCode, version: u64, body: &T) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(ETAG, v);
    }
    response
}

/// The verified principal of a request. A user's active membership row with role `admin` makes
/// it a tenant admin whatever its token says (DESIGN.md 3.6); with memberships required, a user
/// without an active membership is refused.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = match parts.extensions.get::<VerifiedPrincipal>() {
            Some(VerifiedPrincipal(p)) => p.clone(),
            None => {
                if !parts.headers.contains_key(AUTHORIZATION) {
                    return Err(ApiError::Unauthenticated("missing bearer token".into()));
                }
                let token = bearer_token(&parts.headers).ok_or_else(|| {
                    ApiError::Unauthenticated("Authorization must be 'Bearer <token>'".into())
                })?;
                state.auth.verify(token)?
            }
        };
        let principal = match principal {
            Principal::User(mut user) => {
                let membership = state
                    .store(
                        "get_membership",
                        state
                            .stores
                            .members
                            .get_membership(&user.tenant_id, &user.user_id),
                    )
                    .await?;
                match membership {
                    Some(m) if m.is_active() && m.role == TenantRole::Admin => {
                        user.role = TenantRole::Admin;
                    }
                    Some(m) if m.is_active() => {}
                    _ if state.service.require_membership => return Err(ApiError::Forbidden),
                    _ => {}
                }
                Principal::User(user)
            }
            other => other,
        };
        Ok(Self(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::Precondition;

    #[test]
    fn if_match_follows_rfc_9110() {
        assert_eq!(Precondition::parse(&["*"]), Precondition::Any);
        assert_eq!(Precondition::parse(&["\"7\""]), Precondition::Exact(7));
        assert_eq!(Precondition::parse(&["7"]), Precondition::Exact(7));
        assert_eq!(Precondition::parse(&["W/\"7\""]), Precondition::Never);
        assert_eq!(Precondition::parse(&["nonsense"]), Precondition::Never);
        assert_eq!(
            Precondition::parse(&["\"3\", W/\"4\", \"5\""]),
            Precondition::OneOf(vec![3, 5])
        );
        assert_eq!(
            Precondition::parse(&["\"3\"", "\"5\""]),
            Precondition::OneOf(vec![3, 5])
        );
    }
}
