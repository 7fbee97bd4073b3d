//! Event streams and rate limiting on one in-process server (the fleet-wide behaviour is in
//! `fleet.rs`): who may open and post, what a stream carries, shutdown, 429 and its headers.

use std::time::Duration;

use copilot_cache::ratelimit::RateLimitSettings;
use reqwest::Method;
use serde_json::json;

use crate::fleet::SseClient;
use crate::{TENANT, TestServer, Who, conversation};

const WAIT: Duration = Duration::from_secs(10);

fn events_url(server: &TestServer, id: &str) -> String {
    format!(
        "{}/v1/tenants/{TENANT}/conversations/{id}/events",
        server.base
    )
}

#[tokio::test]
async fn a_stream_carries_writes_and_custom_events_and_checks_access_when_it_opens() {
    let server = TestServer::start().await;
    let id = conversation(&server, Who::Owner, json!({"title": "mine"})).await;
    // A colleague may not read a private conversation: its stream is 404 like a GET.
    let r = server
        .get(
            &format!("/v1/tenants/{TENANT}/conversations/{id}/events"),
            Who::Colleague,
        )
        .await;
    r.problem(404, "not_found");
    let r = server
        .get(
            &format!("/v1/tenants/{TENANT}/conversations/{id}/events"),
            Who::Nobody,
        )
        .await;
    r.problem(401, "unauthenticated");

    let owner = Who::Owner.token().unwrap();
    let mut stream = SseClient::open(&events_url(&server, &id), &owner, None).await;
    let path = format!("/v1/tenants/{TENANT}/conversations/{id}/events");
    // Posting: services only, with a well-formed, unreserved type.
    server
        .post(
            &path,
            Who::Owner,
            json!({"type": "token.delta", "data": {}}),
        )
        .await
        .problem(403, "forbidden");
    for (body, field) in [
        (json!({"type": "message.appended"}), "type"),
        (json!({"type": "resync"}), "type"),
        (json!({"type": "has space"}), "type"),
        (json!({"type": "x", "extra": 1}), "extra"),
        (json!({"data": 1}), "type"),
    ] {
        let r = server.post(&path, Who::Service, body).await;
        r.problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field);
    }
    server
        .post(
            &path,
            Who::Service,
            json!({"type": "x", "data": "y".repeat(70_000)}),
        )
        .await
        .problem(413, "payload_too_large");
    let accepted = server
        .post(
            &path,
            Who::Service,
            json!({"type": "token.delta", "data": {"delta": "Hel"}}),
        )
        .await;
    let posted_id = accepted.ok(202)["id"].as_str().unwrap().to_owned();
    let event = stream.next(WAIT).await.unwrap();
    assert_eq!(
        (event.event.as_str(), &event.data, event.id.as_deref()),
        (
            "token.delta",
            &json!({"delta": "Hel"}),
            Some(posted_id.as_str())
        )
    );

    server
        .post(
            &format!("/v1/tenants/{TENANT}/conversations/{id}/messages"),
            Who::Owner,
            json!({"role": "user", "content": "hi"}),
        )
        .await
        .ok(201);
    let event = stream.next(WAIT).await.unwrap();
    assert_eq!(
        (event.event.as_str(), &event.data["content"]),
        ("message.appended", &json!("hi"))
    );
    let message = event.data["id"].as_str().unwrap().to_owned();
    server
        .delete(
            &format!("/v1/tenants/{TENANT}/conversations/{id}/messages/{message}"),
            Who::Owner,
        )
        .await;
    let event = stream.next(WAIT).await.unwrap();
    assert_eq!(event.event, "message.deleted");
    assert_eq!(event.data, json!({"messageId": message, "seq": 1}));
    // Deleted: `conversation.deleted`, then `conversation.removed`, then the end.
    server
        .delete(
            &format!("/v1/tenants/{TENANT}/conversations/{id}"),
            Who::Owner,
        )
        .await;
    let deleted = stream.next(WAIT).await.unwrap();
    let removed = stream.next(WAIT).await.unwrap();
    assert_eq!(
        [deleted.event.as_str(), removed.event.as_str()],
        ["conversation.deleted", "conversation.removed"]
    );
    assert_eq!(removed.data, json!({"id": id}));
    assert!(stream.next(Duration::from_secs(2)).await.is_none());
}

#[tokio::test]
async fn a_reader_who_loses_access_gets_removed_and_the_stream_ends() {
    let server = TestServer::start().await;
    let id = conversation(&server, Who::Owner, json!({"shareAudience": "tenant"})).await;
    let bob = Who::Colleague.token().unwrap();
    let mut stream = SseClient::open(&events_url(&server, &id), &bob, None).await;
    server
        .patch(
            &format!("/v1/tenants/{TENANT}/conversations/{id}"),
            Who::Owner,
            json!({"title": "renamed"}),
        )
        .await
        .ok(200);
    let updated = stream.next(WAIT).await.unwrap();
    assert_eq!(
        (updated.event.as_str(), &updated.data["title"]),
        ("conversation.updated", &json!("renamed"))
    );
    server
        .patch(
            &format!("/v1/tenants/{TENANT}/conversations/{id}"),
            Who::Owner,
            json!({"shareAudience": "private", "title": "secret title"}),
        )
        .await
        .ok(200);
    let removed = stream.next(WAIT).await.unwrap();
    assert_eq!(
        (removed.event.as_str(), &removed.data),
        ("conversation.removed", &json!({"id": id}))
    );
    assert!(stream.next(Duration::from_secs(2)).await.is_none());
}

/// Shutdown ends open streams instead of waiting on them forever.
#[tokio::test]
async fn streams_end_cleanly_on_shutdown() {
    let server = TestServer::start().await;
    let id = conversation(&server, Who::Owner, json!({})).await;
    let owner = Who::Owner.token().unwrap();
    let mut stream = SseClient::open(&events_url(&server, &id), &owner, None).await;
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown did not wait on the open stream");
    assert!(stream.next(Duration::from_secs(5)).await.is_none());
}

#[tokio::test]
async fn past_the_limit_requests_get_429_with_retry_after_and_health_is_never_limited() {
    let first = TestServer::start().await;
    let store = first.store.clone();
    first.stop().await;
    let mut cache = TestServer::default_cache();
    cache.rate_limit = Some(RateLimitSettings {
        limit: 60,
        period: Duration::from_secs(60),
        burst: 3,
        ..Default::default()
    });
    let server = TestServer::start_cached(store, TestServer::default_settings(false), cache).await;
    let path = format!("/v1/tenants/{TENANT}/llm-policy");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = server.call(Method::GET, &path, Who::Owner, None).await;
        for header in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
            assert!(r.headers.contains_key(header), "{header} missing");
        }
        statuses.push(r.status.as_u16());
        if r.status == 429 {
            r.problem(429, "rate_limited");
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&retry), "retry after {retry}");
        }
    }
    assert_eq!(statuses, [404, 404, 404, 429, 429]);
    // Another principal has its own budget; health, readiness and metrics are never limited.
    server
        .call(Method::GET, &path, Who::Colleague, None)
        .await
        .problem(404, "policy_not_found");
    for path in ["/healthz", "/readyz", "/metrics"] {
        for _ in 0..5 {
            let r = server.call(Method::GET, path, Who::Owner, None).await;
            assert_eq!(r.status, 200, "{path}");
            assert!(!r.headers.contains_key("ratelimit-limit"));
        }
    }
}
