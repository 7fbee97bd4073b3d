//! The OpenAPI 3.1 document, assembled from the handlers' annotations, the route modules' input
//! schemas and the domain types.

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
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;
use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "copilot-state", description = "Shared state layer of a multi-tenant LLM copilot: \
        tenant LLM routing policy, conversation configuration hierarchy, conversations and messages."),
    paths(
        routes::health::healthz, routes::health::readyz, routes::health::metrics, serve,
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
        Problem, FieldError, EgressMode, copilot_domain::egress::EgressModeInput, StoredPolicy, LlmTaskPolicy, UserEgressPolicy, Route,
        RouteSource, EgressDecision, ConfigPatch, copilot_domain::config::ConfigPatchInput, ConfigValues, ConfigSources, ConfigSource, LevelVersions,
        EffectiveConfig, StoredPatchView, MergeCompressionStrategy, PathCompressionStrategy, Conversation,
        ConversationPage, ConversationStatus, Message, MessagePage, MessageRole, ShareAudience, TenantAccess, Membership,
        MembershipStatus, TenantRole, routes::admin::CacheSwitchInput, routes::admin::CacheReportDoc,
        routes::admin::CacheStateDoc, routes::admin::RedisTopologyDoc,
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
/// This document.
#[utoipa::path(operation_id = "getOpenApiDocument", get, path = "/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
pub async fn serve() -> axum::response::Response {
    use axum::response::IntoResponse;
    (axum::http::StatusCode::OK, axum::Json(document())).into_response()
}

pub fn document() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or_default())
}
