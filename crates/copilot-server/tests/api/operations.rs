use reqwest::Method;
use serde_json::json;

use crate::{TENANT, TestServer, Who};

#[tokio::test]
async fn health_readiness_metrics_and_openapi() {
    let s = TestServer::start().await;
    assert_eq!(s.get("/healthz", Who::Nobody).await.ok(200)["status"], "ok");
    let ready = s.get("/readyz", Who::Nobody).await;
    assert_eq!(ready.ok(200)["redis"], "disabled");
    assert_eq!(ready.body["store"], "ok");

    s.get(
        &format!("/v1/tenants/{TENANT}/config/effective"),
        Who::Owner,
    )
    .await
    .ok(200);
    let metrics = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("copilot_http_requests_total"), "{metrics}");
    assert!(metrics.contains("route=\"/v1/tenants/{t}/config/effective\""));
    assert!(metrics.contains("copilot_http_request_duration_seconds"));
    assert!(metrics.contains("copilot_store_duration_seconds"));
    assert!(
        metrics.contains("copilot_cache_requests_total{cache=\"config\""),
        "every cache branch has a metric"
    );

    let doc = s.get("/openapi.json", Who::Nobody).await;
    let doc = doc.ok(200);
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/v1/tenants/{t}/llm-policy",
        "/v1/tenants/{t}/llm-route",
        "/v1/tenants/{t}/config/effective",
        "/v1/config/global",
        "/v1/tenants/{t}/config",
        "/v1/tenants/{t}/users/{u}/config",
        "/v1/tenants/{t}/conversations",
        "/v1/tenants/{t}/conversations/{id}",
        "/v1/tenants/{t}/conversations/{id}/messages",
        "/v1/tenants/{t}/conversations/{id}/messages/{mid}",
        "/v1/tenants/{t}/members",
        "/v1/tenants/{t}/members/{u}",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert_eq!(
        doc["paths"]["/v1/tenants/{t}/llm-policy"]["get"]["responses"]["404"]["content"]["application/problem+json"]
            ["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
}

#[tokio::test]
async fn authentication_errors_are_401_problems() {
    let s = TestServer::start().await;
    let path = format!("/v1/tenants/{TENANT}/llm-policy");
    s.get(&path, Who::Nobody)
        .await
        .problem(401, "unauthenticated");
    let r = s
        .send(
            Method::GET,
            &path,
            Who::Nobody,
            None,
            &[("authorization", "Bearer nope")],
        )
        .await;
    r.problem(401, "unauthenticated");
    assert_eq!(r.headers.get("www-authenticate").unwrap(), "Bearer");
    let r = s
        .send(
            Method::GET,
            &path,
            Who::Nobody,
            None,
            &[("authorization", "Basic abc")],
        )
        .await;
    r.problem(401, "unauthenticated");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let s = TestServer::start().await;
    let r = s.get("/healthz", Who::Nobody).await;
    let first = r.headers.get("x-request-id").unwrap().clone();
    let second = s.get("/healthz", Who::Nobody).await.headers["x-request-id"].clone();
    // New ids are UUIDs, and no two alike.
    for id in [&first, &second] {
        uuid::Uuid::parse_str(id.to_str().unwrap()).expect("a UUID");
    }
    assert_ne!(first, second);
    let r = s
        .send(
            Method::GET,
            "/nope",
            Who::Nobody,
            None,
            &[("x-request-id", "abc-123")],
        )
        .await;
    assert_eq!(r.headers.get("x-request-id").unwrap(), "abc-123");
    r.problem(404, "not_found");
    let r = s
        .send(
            Method::GET,
            "/v1/tenants/acme/llm-policy",
            Who::Nobody,
            None,
            &[("x-request-id", "req-9")],
        )
        .await;
    assert_eq!(r.headers.get("x-request-id").unwrap(), "req-9");
}

#[tokio::test]
async fn malformed_oversized_and_wrong_method_requests() {
    let s = TestServer::start().await;
    let path = format!("/v1/tenants/{TENANT}/conversations");
    s.raw(
        Method::POST,
        &path,
        Who::Owner,
        b"{not json".to_vec(),
        "application/json",
    )
    .await
    .problem(400, "invalid_request");
    s.raw(
        Method::POST,
        &path,
        Who::Owner,
        Vec::new(),
        "application/json",
    )
    .await
    .problem(400, "invalid_request");
    let huge = format!("{{\"title\":\"{}\"}}", "x".repeat(2 * 1024 * 1024 + 10));
    s.raw(
        Method::POST,
        &path,
        Who::Owner,
        huge.into_bytes(),
        "application/json",
    )
    .await
    .problem(413, "payload_too_large");
    s.call(Method::PUT, &path, Who::Owner, Some(json!({})))
        .await
        .problem(405, "method_not_allowed");
    s.get("/v1/tenants/bad%20tenant/conversations", Who::Owner)
        .await
        .problem(400, "invalid_id");
}

#[tokio::test]
async fn store_down_means_not_ready_and_503_store_unavailable() {
    let s = TestServer::start().await;
    s.get("/readyz", Who::Nobody).await.ok(200);
    s.store.close().await;
    s.get("/readyz", Who::Nobody)
        .await
        .problem(503, "store_unavailable");
    s.get(&format!("/v1/tenants/{TENANT}/conversations"), Who::Owner)
        .await
        .problem(503, "store_unavailable");
    s.put(
        "/v1/config/global",
        Who::Service,
        json!({"mergeMaxMessages": 3}),
    )
    .await
    .problem(503, "store_unavailable");
    // Liveness does not depend on the store.
    s.get("/healthz", Who::Nobody).await.ok(200);
}

/// The bearer scheme is case-insensitive (RFC 9110 11.1), and clients cannot mint metric series:
/// invented methods share one label value.
#[tokio::test]
async fn bearer_in_any_case_and_metric_labels_that_clients_cannot_choose() {
    let s = TestServer::start().await;
    let token = Who::Owner.token().unwrap();
    let client = reqwest::Client::new();
    for scheme in ["Bearer", "bearer", "BEARER", "BeArEr"] {
        let r = client
            .get(format!(
                "{}/v1/tenants/{}/config/effective",
                s.base,
                crate::TENANT
            ))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("INVENTED{i}").as_bytes()).unwrap();
        let _ = client
            .request(method, format!("{}/v1/config/global", s.base))
            .send()
            .await
            .unwrap();
    }
    let metrics = reqwest::get(format!("{}/metrics", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("INVENTED"), "a client-chosen label value");
    assert!(metrics.contains("method=\"other\""));
}

/// DESIGN.md 6.1: a U+0000 anywhere in a body is 422 naming the field, on every backend alike
/// (it was a 500 on PostgreSQL). The HTTP tests run over SQLite and again over PostgreSQL.
#[tokio::test]
async fn nul_characters_are_422_naming_the_field_and_nothing_is_written() {
    let s = TestServer::start().await;
    let conversation = crate::conversation(&s, Who::Owner, json!({"title": "fine"})).await;
    let cases = [
        (
            Method::POST,
            format!("/v1/tenants/{TENANT}/conversations"),
            json!({"title": "a\u{0}b"}),
            "title",
        ),
        (
            Method::POST,
            format!("/v1/tenants/{TENANT}/conversations/{conversation}/messages"),
            json!({"role": "user", "content": "hi\u{0}"}),
            "content",
        ),
        (
            Method::POST,
            format!("/v1/tenants/{TENANT}/conversations/{conversation}/messages"),
            json!({"role": "user", "content": "hi", "metadata": {"note": "\u{0}"}}),
            "metadata.note",
        ),
        (
            Method::PATCH,
            format!("/v1/tenants/{TENANT}/conversations/{conversation}"),
            json!({"title": "\u{0}"}),
            "title",
        ),
        (
            Method::PUT,
            format!("/v1/tenants/{TENANT}/llm-policy"),
            json!({"defaultModel": "m\u{0}", "defaultProvider": "openai",
                   "tasks": [{"task": "t", "model": "x\u{0}", "provider": "openai"}]}),
            "tasks[0].model",
        ),
        (
            Method::POST,
            format!("/v1/tenants/{TENANT}/llm-route"),
            json!({"task": "\u{0}"}),
            "task",
        ),
    ];
    for (method, path, body, field) in cases {
        let r = s
            .call(method.clone(), &path, Who::Service, Some(body))
            .await;
        r.problem(422, "validation_failed");
        let fields: Vec<&str> = r.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.contains(&field), "{method} {path}: {fields:?}");
    }
    // Nothing was written.
    let list = s
        .get(&format!("/v1/tenants/{TENANT}/conversations"), Who::Owner)
        .await;
    assert_eq!(list.ok(200)["items"].as_array().unwrap().len(), 1);
    let messages = s
        .get(
            &format!("/v1/tenants/{TENANT}/conversations/{conversation}/messages"),
            Who::Owner,
        )
        .await;
    assert_eq!(messages.ok(200)["items"].as_array().unwrap().len(), 0);
    s.get(&format!("/v1/tenants/{TENANT}/llm-policy"), Who::Owner)
        .await
        .problem(404, "policy_not_found");
}

/// `/openapi.json` is a document client generators accept: every operation id is unique and
/// every `$ref` resolves (it once referenced a schema it did not define, and two operations
/// were each called `list` and `delete`).
#[tokio::test]
async fn the_openapi_document_has_unique_operation_ids_and_no_dangling_refs() {
    let s = TestServer::start().await;
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if let Some(id) = op.get("operationId").and_then(|v| v.as_str()) {
                assert!(
                    ids.insert(id.to_owned()),
                    "{method} {path}: operationId {id} twice"
                );
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for reference in text.split("#/components/schemas/").skip(1) {
        let name: String = reference
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        assert!(schemas.contains_key(&name), "dangling $ref to {name}");
    }
}

/// The document and the parsers agree (issue "One source per fact"): every request body the
/// document gives as an example is accepted by its operation, and every field it documents is
/// one the parser checks: a value of the wrong kind in that field alone is refused with 422 and
/// an error naming that field.
#[tokio::test]
async fn every_documented_example_is_accepted_and_every_documented_field_is_checked() {
    let s = TestServer::start().await;
    let doc = s.get("/openapi.json", Who::Nobody).await.ok(200).clone();
    let conversation = crate::conversation(&s, Who::Owner, json!({"title": "target"})).await;
    // Echoed back by clients and ignored (DESIGN.md 6.2): no error for them.
    let ignored = ["version", "updatedAt", "updatedBy"];
    let mut examples = 0;
    let mut fields = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let Some(body) = operation.get("requestBody") else {
                continue;
            };
            let (_, media) = body["content"].as_object().unwrap().iter().next().unwrap();
            let reference = media["schema"]["$ref"].as_str().expect("a named schema");
            let name = reference.rsplit('/').next().unwrap();
            let schema = &doc["components"]["schemas"][name];
            let example = schema
                .get("example")
                .unwrap_or_else(|| panic!("{name} has no example"))
                .clone();
            let url = path
                .replace("{t}", crate::TENANT)
                .replace("{u}", "alice")
                .replace("{id}", &conversation);
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let accepted = s
                .call(method.clone(), &url, Who::Service, Some(example.clone()))
                .await;
            assert!(
                accepted.status.is_success(),
                "{method} {path}: the example of {name} was refused: {} {}",
                accepted.status,
                accepted.body
            );
            examples += 1;
            for (field, property) in schema["properties"].as_object().unwrap() {
                // A field documented as any JSON value has no wrong kind.
                let constrained = ["type", "$ref", "oneOf", "anyOf", "allOf", "enum"]
                    .iter()
                    .any(|k| property.get(*k).is_some());
                if ignored.contains(&field.as_str()) || !constrained {
                    continue;
                }
                let mut wrong = example.clone();
                wrong[field.as_str()] = json!([[1e300]]);
                let refused = s
                    .call(method.clone(), &url, Who::Service, Some(wrong))
                    .await;
                let named = refused.body["errors"].as_array().is_some_and(|errors| {
                    errors.iter().any(|e| {
                        e["field"].as_str().is_some_and(|f| {
                            f == field
                                || f.starts_with(&format!("{field}."))
                                || f.starts_with(&format!("{field}["))
                        })
                    })
                });
                assert!(
                    refused.status == 422 && named,
                    "{method} {path}: {name}.{field} of the wrong kind: {} {}",
                    refused.status,
                    refused.body
                );
                fields += 1;
            }
        }
    }
    assert!(
        examples >= 13 && fields >= 40,
        "{examples} examples, {fields} fields"
    );
}
