//! The OpenAPI 3.1 document, generated from the handlers' annotations and the domain types.
//! Request bodies are parsed by hand (one error per field), so their schemas are declared here.

#![allow(dead_code)] // The input structs exist for their schemas only.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use copilot_domain::FieldError;
use copilot_domain::access::TenantRole;
use copilot_domain::config::{
    ConfigPatch, ConfigSource, ConfigSources, ConfigValues, EffectiveConfig, LevelVersions,
    MergeCompressionStrategy, PathCompressionStrategy, StoredPatchView,
};
use copilot_domain::conversation::{
    Conversation, ConversationPage, ConversationStatus, Message, MessagePage, MessageRole,
    ShareAudience, TenantAccess,
};
use copilot_domain::egress::EgressMode;
use copilot_domain::membership::{Membership, MembershipStatus};
use copilot_domain::policy::{LlmTaskPolicy, StoredPolicy, UserEgressPolicy};
use copilot_domain::route::{EgressDecision, Route, RouteSource};
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::error::Problem;
use crate::routes;

/// An egress mode as accepted on input (`report-only` is the legacy name of `audit`).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EgressModeInput {
    Off,
    Audit,
    #[serde(rename = "report-only")]
    ReportOnly,
    Enforce,
}

/// A tenant LLM policy to store. `version`, `updatedAt` and `updatedBy` may be sent back and
/// are ignored; any other unknown field is refused.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyInput {
    /// Must equal the tenant in the path when given.
    tenant_id: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    default_model: String,
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    default_provider: String,
    /// Default true; false means only the local provider may be used.
    allow_remote_egress: Option<bool>,
    #[schema(max_items = 256)]
    tasks: Option<Vec<LlmTaskPolicy>>,
    egress_mode: Option<EgressModeInput>,
    allow_off_mode: Option<bool>,
    user_policies: Option<BTreeMap<String, UserEgressPolicy>>,
    version: Option<u64>,
    updated_at: Option<String>,
    updated_by: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRequestInput {
    #[schema(min_length = 1, max_length = 100)]
    task: Option<String>,
    /// Defaults to the caller; another user's: tenant admins and services.
    user_id: Option<String>,
    /// Replaces the model, never the provider.
    #[schema(min_length = 1, max_length = 200)]
    model: Option<String>,
    egress_mode_override: Option<EgressModeInput>,
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f64>,
    #[schema(minimum = 1, maximum = 1000000)]
    max_tokens: Option<u32>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConversationCreateInput {
    /// Services only: the owner, or null for a system conversation. Members may give their own.
    user_id: Option<String>,
    #[schema(max_length = 200)]
    title: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    persona_id: Option<String>,
    #[schema(max_items = 50)]
    jurisdictions: Option<Vec<String>>,
    share_audience: Option<ShareAudience>,
    tenant_access: Option<TenantAccess>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConversationUpdateInput {
    /// null clears the title.
    #[schema(max_length = 200)]
    title: Option<String>,
    share_audience: Option<ShareAudience>,
    tenant_access: Option<TenantAccess>,
    archived: Option<bool>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageCreateInput {
    role: MessageRole,
    /// At most COPILOT_MAX_MESSAGE_BYTES (256 KiB by default).
    content: String,
    /// A JSON object of at most 64 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipPutInput {
    role: TenantRole,
    status: MembershipStatus,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// Tenant id
    #[param(pattern = r"^[A-Za-z0-9._:@-]{1,128}$")]
    t: String,
}

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

/// A config level's fields: absent inherits from the level below; in a merge patch, `null`
/// clears a field. `version`, `updatedAt` and `updatedBy` are read-only and ignored.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigPatchInput {
    merge_compression_strategy: Option<MergeCompressionStrategy>,
    #[schema(minimum = 1, maximum = 100000)]
    merge_max_messages: Option<u32>,
    merge_preserve_pinned: Option<bool>,
    path_compression_strategy: Option<PathCompressionStrategy>,
    #[schema(minimum = 1, maximum = 100000)]
    path_max_messages: Option<u32>,
    #[schema(minimum = 1, maximum = 10000)]
    path_sliding_window_size: Option<u32>,
    #[schema(minimum = 0, maximum = 1)]
    path_compression_threshold: Option<f64>,
    auto_compact_enabled: Option<bool>,
    #[schema(minimum = 1, maximum = 10080)]
    compaction_interval_minutes: Option<u32>,
    version: Option<u64>,
    updated_at: Option<String>,
    updated_by: Option<String>,
}

/// `PUT /v1/admin/cache`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSwitchInput {
    enabled: bool,
}

/// One cache in `GET /v1/admin/cache`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheReportDoc {
    enabled: bool,
    hits: u64,
    misses: u64,
    hit_ratio: f64,
}

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

#[derive(OpenApi)]
#[openapi(
    info(title = "copilot-state", description = "Shared state layer of a multi-tenant LLM copilot: \
        tenant LLM routing policy, conversation configuration hierarchy, conversations and messages."),
    paths(
        routes::health::healthz, routes::health::readyz, routes::health::metrics, routes::health::openapi,
        routes::policy::get_policy, routes::policy::put_policy, routes::policy::delete_policy, routes::policy::resolve,
        routes::config::effective,
        routes::config::get_global, routes::config::put_global, routes::config::patch_global, routes::config::delete_global,
        routes::config::get_tenant, routes::config::put_tenant, routes::config::patch_tenant, routes::config::delete_tenant,
        routes::config::get_user, routes::config::put_user, routes::config::patch_user, routes::config::delete_user,
        routes::conversations::create, routes::conversations::list, routes::conversations::get,
        routes::conversations::update, routes::conversations::delete,
        routes::conversations::append, routes::conversations::messages, routes::conversations::delete_message,
        routes::events::conversation_events, routes::events::list_events, routes::events::post_event,
        routes::members::list, routes::members::put, routes::members::delete,
        routes::admin::get_cache, routes::admin::put_cache,
    ),
    components(schemas(
        Problem, FieldError, EgressMode, EgressModeInput, StoredPolicy, LlmTaskPolicy, UserEgressPolicy, Route,
        RouteSource, EgressDecision, ConfigPatch, ConfigPatchInput, ConfigValues, ConfigSources, ConfigSource, LevelVersions,
        EffectiveConfig, StoredPatchView, MergeCompressionStrategy, PathCompressionStrategy, Conversation,
        ConversationPage, ConversationStatus, Message, MessagePage, MessageRole, ShareAudience, TenantAccess, Membership,
        MembershipStatus, TenantRole, CacheSwitchInput, CacheReportDoc, CacheStateDoc, RedisTopologyDoc,
        routes::events::EventPostInput, routes::events::EventAccepted,
    )),
    modifiers(&BearerSecurity, &ProblemResponses),
    tags(
        (name = "policy", description = "Tenant LLM routing policy and route resolution"),
        (name = "config", description = "Conversation configuration: global, tenant and user levels"),
        (name = "conversations", description = "Conversations, sharing and archive"),
        (name = "messages", description = "Messages of a conversation"),
        (name = "events", description = "Live events (server-sent events) and custom events"),
        (name = "members", description = "Tenant memberships"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

struct BearerSecurity;

impl Modify for BearerSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// Every `/v1` operation can answer with these problem documents (DESIGN.md 6.1).
const API_ERRORS: &[(&str, &str)] = &[
    ("400", "invalid_request, invalid_id or invalid_cursor"),
    ("401", "unauthenticated"),
    ("403", "forbidden"),
    ("404", "not_found or policy_not_found"),
    ("405", "method_not_allowed"),
    ("409", "no_local_route or conversation_archived"),
    ("412", "precondition_failed: If-Match does not match"),
    (
        "408",
        "request_timeout: the body did not arrive within COPILOT_BODY_TIMEOUT_MS",
    ),
    ("413", "payload_too_large"),
    ("422", "validation_failed, one entry per bad field"),
    ("429", "rate_limited"),
    (
        "503",
        "store_unavailable (redis_unavailable for the cache switch)",
    ),
];

struct ProblemResponses;

impl Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let errors: Vec<(&str, &str)> = if path.starts_with("/v1/") {
                API_ERRORS.to_vec()
            } else if path == "/readyz" {
                vec![("503", "store_unavailable")]
            } else {
                Vec::new()
            };
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (status, description) in &errors {
                    op.responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(*description)
                                    .content(
                                        "application/problem+json",
                                        ContentBuilder::new()
                                            .schema(Some(Ref::from_schema_name("Problem")))
                                            .build(),
                                    )
                                    .build(),
                            )
                        });
                }
            }
        }
    }
}

/// The document, built once.
pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or_default())
}
