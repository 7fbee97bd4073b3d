//! The router and its middleware: request ids, tracing spans, request metrics.

use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tracing::Instrument;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use copilot_cache::ratelimit::{RateDecision, RateKey, RateLimiterService};
use copilot_domain::{Principal, TenantId};

use crate::auth::{Authenticator, VerifiedPrincipal, bearer_token};
use crate::error::ApiError;
use crate::routes::{admin, config, conversations, events, health, members, policy};
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(crate::openapi::serve))
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
            "/v1/tenants/{t}/conversations/events",
            get(events::list_events),
        )
        .route(
            "/v1/tenants/{t}/conversations/{id}/events",
            get(events::conversation_events).post(events::post_event),
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
        .with_state(state.clone());

    let limiting = Arc::new(Limiting {
        limiter: state.cache.rate_limiter().cloned(),
        auth: state.auth.clone(),
        trusted_proxies: state.service.trusted_proxies.clone(),
        http_metrics: HttpMetrics::new(),
    });
    // One middleware for the request span and log line, metrics and limits: each layer costs
    // a service clone and a boxed future per request (a `TraceLayer` here also read the clock
    // twice more, for a latency `edge` measures anyway).
    api.layer(middleware::from_fn_with_state(limiting, edge))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(CountedRequestId::new()))
}

/// New request ids: a random 64-bit start per process and a counter, shaped as a UUID
/// (version 8). Unique like a random UUID, without the `getrandom` call per request that a v4
/// costs.
#[derive(Clone)]
struct CountedRequestId {
    start: u64,
    next: Arc<AtomicU64>,
}

impl CountedRequestId {
    fn new() -> Self {
        Self {
            start: uuid::Uuid::new_v4().as_u64_pair().0,
            next: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl MakeRequestId for CountedRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let bytes = ((u128::from(self.start) << 64) | u128::from(n)).to_be_bytes();
        let id = uuid::Builder::from_custom_bytes(bytes).into_uuid();
        let mut text = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut text))
            .ok()
            .map(RequestId::new)
    }
}

/// The request's span (carrying its request id) around everything below, one log line, and
/// `copilot_http_requests_total` and `copilot_http_request_duration_seconds` by route and
/// status, around the rate limit.
async fn edge(State(state): State<Arc<Limiting>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // The path names the tenant; never log bodies, queries or tokens.
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id);
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(req.method());
    let if_none_match = if method == "GET" {
        req.headers()
            .get(axum::http::header::IF_NONE_MATCH)
            .cloned()
    } else {
        None
    };
    let limited = rate_limit(&state, req, next).instrument(span.clone()).await;
    let response = crate::conditional::answer(if_none_match, limited);
    let elapsed = started.elapsed();
    // One line per request, inside the request span; the route is the template (no ids, no
    // query, no token).
    span.in_scope(|| {
        tracing::info!(
            method,
            route = %route,
            status = response.status().as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            "request"
        )
    });
    let (requests, duration) =
        state
            .http_metrics
            .handles(route, method, response.status().as_u16());
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
    response
}

/// The request metrics' handles by (route, method, status): naming a metric by its labels costs
/// allocations and a registry lookup per request; a handle is one atomic operation. The label
/// sets are few (route templates x methods x statuses) and bounded here anyway.
struct HttpMetrics {
    handles: quick_cache::sync::Cache<HttpLabels, (metrics::Counter, metrics::Histogram)>,
}

type HttpLabels = (String, &'static str, u16);

/// A borrowed [`HttpLabels`], to look handles up without allocating.
#[derive(Hash)]
struct HttpLabelsRef<'a>(&'a str, &'static str, u16);

impl quick_cache::Equivalent<HttpLabels> for HttpLabelsRef<'_> {
    fn equivalent(&self, key: &HttpLabels) -> bool {
        self.0 == key.0 && self.1 == key.1 && self.2 == key.2
    }
}

impl HttpMetrics {
    fn new() -> Self {
        Self {
            handles: quick_cache::sync::Cache::new(1024),
        }
    }

    fn handles(
        &self,
        route: &str,
        method: &'static str,
        status: u16,
    ) -> (metrics::Counter, metrics::Histogram) {
        if let Some(found) = self.handles.get(&HttpLabelsRef(route, method, status)) {
            return found;
        }
        let labels = [
            ("route", route.to_owned()),
            ("method", method.to_owned()),
            ("status", status.to_string()),
        ];
        let found = (
            metrics::counter!("copilot_http_requests_total", &labels),
            metrics::histogram!("copilot_http_request_duration_seconds", &labels),
        );
        self.handles
            .insert((route.to_owned(), method, status), found.clone());
        found
    }
}

/// The method as a metric label: the methods of this API and HTTP's usual ones; anything a
/// client invents is `other` (labels never take client-chosen values).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// What the rate-limit layer needs: one `Arc` to clone per request, not the whole `AppState`.
struct Limiting {
    limiter: Option<Arc<RateLimiterService>>,
    auth: Arc<Authenticator>,
    trusted_proxies: Vec<crate::net::Cidr>,
    http_metrics: HttpMetrics,
}

/// Rate limiting of every `/v1` request (DESIGN.md 6.5), keyed by the verified principal, or by
/// the client address when there is none; `RateLimit-*` headers on every answer, 429 with
/// `Retry-After` past the limit. The principal verified here is handed to the `Auth` extractor.
async fn rate_limit(state: &Limiting, mut req: Request, next: Next) -> Response {
    let Some(limiter) = &state.limiter else {
        return next.run(req).await;
    };
    if !req.uri().path().starts_with("/v1/") {
        return next.run(req).await;
    }
    let principal = bearer_token(req.headers()).and_then(|t| state.auth.verify(t).ok());
    let key = match &principal {
        Some(Principal::User(u)) => RateKey::Principal {
            tenant: u.tenant_id.to_string(),
            subject: u.user_id.to_string(),
        },
        Some(Principal::Service { .. }) => RateKey::Principal {
            tenant: path_tenant(req.uri().path()).unwrap_or_else(|| "global".to_owned()),
            subject: "service".to_owned(),
        },
        None => {
            let peer = req
                .extensions()
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
            let forwarded = req
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok());
            RateKey::Peer(crate::net::client_address(
                peer,
                forwarded,
                &state.trusted_proxies,
            ))
        }
    };
    if let Some(p) = principal {
        req.extensions_mut().insert(VerifiedPrincipal(p));
    }
    let decision = limiter.check(&key).await;
    let mut response = if decision.allowed {
        next.run(req).await
    } else {
        ApiError::RateLimited(ceil_seconds(decision.retry_after)).into_response()
    };
    rate_limit_headers(&mut response, &decision);
    response
}

/// The tenant a service principal acts in, from `/v1/tenants/{t}/...` (valid ids only).
fn path_tenant(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/tenants/")?;
    let tenant = rest.split('/').next()?;
    TenantId::parse(tenant).ok().map(|t| t.to_string())
}

fn ceil_seconds(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn rate_limit_headers(response: &mut Response, decision: &RateDecision) {
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", u64::from(decision.limit)),
        ("ratelimit-remaining", u64::from(decision.remaining)),
        ("ratelimit-reset", ceil_seconds(decision.reset)),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
}
