//! The path parameters the routes share, documented once for the OpenAPI document.

use serde::Deserialize;
use utoipa::IntoParams;

#[allow(dead_code)] // Exists for its parameters' documentation.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// Tenant id
    #[param(pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    t: String,
}

#[allow(dead_code)] // Exists for its parameters' documentation.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantUserPath {
    /// Tenant id
    #[param(pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    t: String,
    /// User id
    #[param(pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    u: String,
}

#[allow(dead_code)] // Exists for its parameters' documentation.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConversationPath {
    /// Tenant id
    #[param(pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    t: String,
    /// Conversation id (UUIDv7)
    #[param(value_type = String, format = Uuid)]
    id: String,
}

#[allow(dead_code)] // Exists for its parameters' documentation.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessagePath {
    /// Tenant id
    #[param(pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    t: String,
    /// Conversation id (UUIDv7)
    #[param(value_type = String, format = Uuid)]
    id: String,
    /// Message id (UUIDv7)
    #[param(value_type = String, format = Uuid)]
    mid: String,
}

/// The `If-Match` header of conditional writes, documented once.
#[allow(dead_code)] // Exists for its parameters' documentation.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatchHeader {
    /// Expected version: "<version>"
    #[param(rename = "If-Match", pattern = r#"^(\*|(W/)?"?[0-9]{1,19}"?)$"#)]
    #[serde(rename = "If-Match")]
    if_match: Option<String>,
}

/// The `Last-Event-ID` header of event streams, documented once.
#[allow(dead_code)] // Exists for its parameters' documentation.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Header)]
pub struct LastEventIdHeader {
    /// The id of the last event received: the stream starts with what came after it
    #[param(rename = "Last-Event-ID")]
    #[serde(rename = "Last-Event-ID")]
    last_event_id: Option<String>,
}
