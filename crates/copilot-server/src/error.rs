//! The one error type of the HTTP layer, mapped to `application/problem+json` in one place.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use copilot_domain::access::Denial;
use copilot_domain::conversation::QueryError;
use copilot_domain::cursor::CursorError;
use copilot_domain::route::RouteError;
use copilot_domain::{FieldError, InputError};
use copilot_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidId(String),
    #[error("the cursor is malformed, was altered or belongs to another listing")]
    InvalidCursor,
    #[error("{0}")]
    Unauthenticated(String),
    #[error("you may not do this")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("this tenant has no LLM policy")]
    PolicyNotFound,
    #[error("no local route for task {}", .0.as_deref().unwrap_or("(none)"))]
    NoLocalRoute(Option<String>),
    #[error("the conversation is archived")]
    ConversationArchived,
    #[error("If-Match does not match the current version")]
    PreconditionFailed,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("this method is not allowed on this path")]
    MethodNotAllowed,
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("too many requests; retry after {0} s")]
    RateLimited(u64),
    #[error("the store is unavailable, try again")]
    StoreUnavailable,
    #[error(
        "Redis did not take the change, so it would not reach every instance; nothing was changed"
    )]
    SwitchUnavailable,
    #[error("internal error")]
    Internal,
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// A stable, machine-readable code (`invalid_request`, `not_found`, ...).
    pub code: String,
    /// One entry per bad field, for `validation_failed`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    /// A 422 naming one bad field.
    pub fn field(field: &str, message: &str) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::InvalidRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            Self::InvalidCursor => (StatusCode::BAD_REQUEST, "invalid_cursor"),
            Self::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::PolicyNotFound => (StatusCode::NOT_FOUND, "policy_not_found"),
            Self::NoLocalRoute(_) => (StatusCode::CONFLICT, "no_local_route"),
            Self::ConversationArchived => (StatusCode::CONFLICT, "conversation_archived"),
            Self::PreconditionFailed => (StatusCode::PRECONDITION_FAILED, "precondition_failed"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Self::SwitchUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "redis_unavailable"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, code) = self.status_and_code();
        Problem {
            problem_type: format!("https://copilot-state.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            code: code.to_owned(),
            errors: match self {
                Self::Validation(errors) => errors.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
        }
        let mut response = (status, axum::Json(self.problem())).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::RateLimited(seconds) = self
            && let Ok(v) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            StoreError::VersionConflict { .. } => Self::PreconditionFailed,
            StoreError::Invalid(input) => input.into(),
            StoreError::ConversationArchived => Self::ConversationArchived,
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                Self::StoreUnavailable
            }
            StoreError::Internal(detail) => {
                tracing::error!(%detail, "store error");
                Self::Internal
            }
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Invalid(errors) => Self::Validation(errors),
            InputError::TooLarge { field, limit } => {
                Self::PayloadTooLarge(format!("{field} exceeds {limit} bytes"))
            }
        }
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        match d {
            Denial::NotFound => Self::NotFound,
            Denial::Forbidden => Self::Forbidden,
            Denial::Archived => Self::ConversationArchived,
        }
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::NoLocalRoute { task } => Self::NoLocalRoute(task),
            RouteError::Denied(d) => d.into(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        Self::InvalidRequest(e.0)
    }
}

impl From<CursorError> for ApiError {
    fn from(_: CursorError) -> Self {
        Self::InvalidCursor
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
