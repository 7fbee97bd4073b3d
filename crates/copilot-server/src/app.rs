//! The router and its middleware: request ids, tracing spans, request metrics.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::routes::{admin, config, conversations, health, members, policy};
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi))
        .route(
            "/v1/tenants/{t}/llm-policy",
            get(policy::get_policy)
                .put(policy::put_policy)
                .delete(policy::delete_policy),
        )
        .route("/v1/tenants/{t}/llm-route", post(policy::resolve))
        .route("/v1/tenants/{t}/config/effective", get(config::effective))
        .route(
            "/v1/config/global",
            get(config::get_global)
                .put(config::put_global)
                .patch(config::patch_global)
                .delete(config::delete_global),
        )
        .route(
            "/v1/tenants/{t}/config",
            get(config::get_tenant)
                .put(config::put_tenant)
                .patch(config::patch_tenant)
                .delete(config::delete_tenant),
        )
        .route(
            "/v1/tenants/{t}/users/{u}/config",
            get(config::get_user)
                .put(config::put_user)
                .patch(config::patch_user)
                .delete(config::delete_user),
        )
        .route(
            "/v1/tenants/{t}/conversations",
            post(conversations::create).get(conversations::list),
        )
        .route(
            "/v1/tenants/{t}/conversations/{id}",
            get(conversations::get)
                .patch(conversations::update)
                .delete(conversations::delete),
        )
        .route(
            "/v1/tenants/{t}/conversations/{id}/messages",
            post(conversations::append).get(conversations::messages),
        )
        .route(
            "/v1/tenants/{t}/conversations/{id}/messages/{mid}",
            axum::routing::delete(conversations::delete_message),
        )
        .route("/v1/tenants/{t}/members", get(members::list))
        .route(
            "/v1/tenants/{t}/members/{u}",
            put(members::put).delete(members::delete),
        )
        .route(
            "/v1/admin/cache",
            get(admin::get_cache).put(admin::put_cache),
        )
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state);

    api.layer(middleware::from_fn(record_metrics))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request| {
                let request_id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                // The path names the tenant; never log bodies, queries or tokens.
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// `copilot_http_requests_total` and `copilot_http_request_duration_seconds` by route and status.
async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("copilot_http_requests_total", &labels).increment(1);
    metrics::histogram!("copilot_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
