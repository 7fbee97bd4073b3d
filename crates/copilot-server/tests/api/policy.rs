use reqwest::Method;
use serde_json::json;

use crate::{OTHER_TENANT, TENANT, TestServer, Who};

fn policy_doc() -> serde_json::Value {
    json!({
        "defaultModel": "gpt-tenant", "defaultProvider": "openai",
        "tasks": [
            {"task": "summarize", "model": "claude", "provider": "anthropic", "temperature": 0.3},
            {"task": "classify", "model": "llama", "provider": "local"}
        ],
        "egressMode": "report-only", "allowOffMode": false,
        "userPolicies": {"alice": {"allowOffMode": true}}
    })
}

#[tokio::test]
async fn policy_lifecycle_and_access() {
    let s = TestServer::start().await;
    let path = format!("/v1/tenants/{TENANT}/llm-policy");
    s.get(&path, Who::Owner)
        .await
        .problem(404, "policy_not_found");
    s.get(&path, Who::Stranger).await.problem(404, "not_found");
    s.put(&path, Who::Owner, policy_doc())
        .await
        .problem(403, "forbidden");
    s.put(&path, Who::Stranger, policy_doc())
        .await
        .problem(404, "not_found");

    let r = s.put(&path, Who::Admin, policy_doc()).await;
    let v1 = r.ok(200)["version"].as_u64().unwrap();
    assert_eq!(r.etag(), Some(format!("\"{v1}\"")));
    assert_eq!(r.body["egressMode"], "audit");
    assert_eq!(r.body["updatedBy"], "carol");
    assert_eq!(r.body["tenantId"], TENANT);

    let r = s.get(&path, Who::Owner).await;
    assert_eq!(r.ok(200)["version"], v1);
    assert_eq!(r.etag(), Some(format!("\"{v1}\"")));

    // If-Match: the current version succeeds, a stale one is 412.
    let current = format!("\"{v1}\"");
    let r = s
        .send(
            Method::PUT,
            &path,
            Who::Service,
            Some(policy_doc()),
            &[("if-match", &current)],
        )
        .await;
    let v2 = r.ok(200)["version"].as_u64().unwrap();
    assert!(v2 > v1);
    s.send(
        Method::PUT,
        &path,
        Who::Service,
        Some(policy_doc()),
        &[("if-match", &current)],
    )
    .await
    .problem(412, "precondition_failed");
    s.send(
        Method::DELETE,
        &path,
        Who::Admin,
        None,
        &[("if-match", "\"1\"")],
    )
    .await
    .problem(412, "precondition_failed");
    s.send(
        Method::PUT,
        &path,
        Who::Admin,
        Some(policy_doc()),
        &[("if-match", "garbage")],
    )
    .await
    .problem(412, "precondition_failed");

    s.delete(&path, Who::Owner).await.problem(403, "forbidden");
    s.delete(&path, Who::Admin).await.ok(204);
    s.get(&path, Who::Owner)
        .await
        .problem(404, "policy_not_found");
    s.delete(&path, Who::Admin)
        .await
        .problem(404, "policy_not_found");
}

#[tokio::test]
async fn policy_validation_errors() {
    let s = TestServer::start().await;
    let path = format!("/v1/tenants/{TENANT}/llm-policy");
    let r = s.put(&path, Who::Admin, json!({"defaultModel": "", "defaultProvider": "Bad Provider", "typo": 1, "tenantId": OTHER_TENANT})).await;
    r.problem(422, "validation_failed");
    let fields: Vec<_> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    for f in ["defaultModel", "defaultProvider", "typo", "tenantId"] {
        assert!(fields.contains(&f.to_owned()), "{f} not in {fields:?}");
    }
    // A policy document over 1 MiB is 413 even though the body limit is 2 MiB.
    let mut doc = policy_doc();
    doc["defaultModel"] = json!("x".repeat(1_100_000));
    s.put(&path, Who::Admin, doc)
        .await
        .problem(413, "payload_too_large");
    s.put(
        "/v1/tenants/has%20space/llm-policy",
        Who::Service,
        policy_doc(),
    )
    .await
    .problem(400, "invalid_id");
    s.get(&path, Who::Owner)
        .await
        .problem(404, "policy_not_found");
}

#[tokio::test]
async fn route_resolution_over_http() {
    let s = TestServer::start().await;
    let route = format!("/v1/tenants/{TENANT}/llm-route");
    // No policy: router defaults.
    let r = s
        .post(&route, Who::Owner, json!({"task": "summarize"}))
        .await;
    let body = r.ok(200);
    assert_eq!(
        (
            body["provider"].as_str(),
            body["model"].as_str(),
            body["source"].as_str()
        ),
        (Some("openai"), Some("router-model"), Some("router-default"))
    );
    assert_eq!(body["policyVersion"], serde_json::Value::Null);
    assert_eq!(body["egress"]["effective"], "enforce");

    s.put(
        &format!("/v1/tenants/{TENANT}/llm-policy"),
        Who::Admin,
        policy_doc(),
    )
    .await
    .ok(200);
    let r = s
        .post(
            &route,
            Who::Owner,
            json!({"task": "summarize", "temperature": 1.9}),
        )
        .await;
    let body = r.ok(200);
    assert_eq!(
        (
            body["provider"].as_str(),
            body["model"].as_str(),
            body["source"].as_str()
        ),
        (Some("anthropic"), Some("claude"), Some("task"))
    );
    assert_eq!(body["temperature"], 0.3);
    assert_eq!(
        body["egress"],
        json!({"requested": "audit", "effective": "audit", "offAllowed": true})
    );
    // A member's loosening override is refused even where off is allowed; a service may
    // loosen to off for alice (allowed) but not for bob.
    let r = s
        .post(&route, Who::Owner, json!({"egressModeOverride": "off"}))
        .await;
    assert_eq!(
        r.ok(200)["egress"],
        json!({"requested": "off", "effective": "audit", "offAllowed": true})
    );
    assert_eq!(
        s.post(&route, Who::Owner, json!({"egressModeOverride": "enforce"}))
            .await
            .ok(200)["egress"]["effective"],
        "enforce"
    );
    let r = s
        .post(
            &route,
            Who::Service,
            json!({"userId": "alice", "egressModeOverride": "off"}),
        )
        .await;
    assert_eq!(r.ok(200)["egress"]["effective"], "off");
    let r = s
        .post(
            &route,
            Who::Service,
            json!({"userId": "bob", "egressModeOverride": "off"}),
        )
        .await;
    assert_eq!(r.ok(200)["egress"]["effective"], "audit");
    // A member resolves only for itself; admins and services for anyone.
    s.post(&route, Who::Colleague, json!({"userId": "alice"}))
        .await
        .problem(403, "forbidden");
    s.post(&route, Who::Admin, json!({"userId": "alice"}))
        .await
        .ok(200);
    s.post(
        &route,
        Who::Service,
        json!({"userId": "alice", "egressModeOverride": "off"}),
    )
    .await
    .ok(200);
    s.post(&route, Who::Stranger, json!({}))
        .await
        .problem(404, "not_found");
    s.post(&route, Who::Owner, json!({"temperature": 9, "bogus": true}))
        .await
        .problem(422, "validation_failed");

    let mut local_only = policy_doc();
    local_only["allowRemoteEgress"] = json!(false);
    s.put(
        &format!("/v1/tenants/{TENANT}/llm-policy"),
        Who::Admin,
        local_only,
    )
    .await
    .ok(200);
    let r = s
        .post(&route, Who::Owner, json!({"task": "summarize"}))
        .await;
    r.problem(409, "no_local_route");
    assert!(r.body["detail"].as_str().unwrap().contains("summarize"));
    assert_eq!(
        s.post(&route, Who::Owner, json!({"task": "classify"}))
            .await
            .ok(200)["provider"],
        "local"
    );
}

/// `If-Match` as RFC 9110 13.1.1 says, on every versioned resource: `*` needs the resource to
/// exist; weak validators never match (strong comparison); a list matches when it holds the
/// current version.
#[tokio::test]
async fn if_match_star_weak_validators_and_lists() {
    let s = TestServer::start().await;
    let policy = format!("/v1/tenants/{TENANT}/llm-policy");
    let level = format!("/v1/tenants/{TENANT}/config");
    let send = |method: Method, path: String, body: Option<serde_json::Value>, if_match: String| {
        let s = &s;
        async move {
            s.send(
                method,
                &path,
                Who::Service,
                body,
                &[("if-match", &if_match)],
            )
            .await
        }
    };
    let config_doc = || Some(json!({"mergeMaxMessages": 7}));
    // `*` on nothing: 412, and nothing is created.
    send(Method::PUT, policy.clone(), Some(policy_doc()), "*".into())
        .await
        .problem(412, "precondition_failed");
    send(Method::PUT, level.clone(), config_doc(), "*".into())
        .await
        .problem(412, "precondition_failed");
    s.get(&policy, Who::Owner)
        .await
        .problem(404, "policy_not_found");
    // Created without a precondition, then `*` matches.
    let v1 = s.put(&policy, Who::Service, policy_doc()).await.ok(200)["version"]
        .as_u64()
        .unwrap();
    let v2 = send(Method::PUT, policy.clone(), Some(policy_doc()), "*".into())
        .await
        .ok(200)["version"]
        .as_u64()
        .unwrap();
    assert!(v2 > v1);
    // A weak validator of the current version does not match.
    send(
        Method::PUT,
        policy.clone(),
        Some(policy_doc()),
        format!("W/\"{v2}\""),
    )
    .await
    .problem(412, "precondition_failed");
    // Lists: any strong member equal to the current version.
    send(
        Method::PUT,
        policy.clone(),
        Some(policy_doc()),
        format!("\"{v1}\", \"999999\""),
    )
    .await
    .problem(412, "precondition_failed");
    let v3 = send(
        Method::PUT,
        policy.clone(),
        Some(policy_doc()),
        format!("\"{v1}\", \"{v2}\""),
    )
    .await
    .ok(200)["version"]
        .as_u64()
        .unwrap();
    send(
        Method::DELETE,
        policy.clone(),
        None,
        format!("W/\"{v3}\", \"{v1}\""),
    )
    .await
    .problem(412, "precondition_failed");
    let r = send(Method::DELETE, policy.clone(), None, "*".into()).await;
    assert_eq!(r.status, 204);
    // The same rules on a config level and a conversation.
    s.put(&level, Who::Service, json!({"mergeMaxMessages": 7}))
        .await
        .ok(200);
    send(Method::PATCH, level.clone(), config_doc(), "*".into())
        .await
        .ok(200);
    let id = crate::conversation(&s, Who::Owner, json!({})).await;
    let conversation = format!("/v1/tenants/{TENANT}/conversations/{id}");
    let version = s.get(&conversation, Who::Owner).await.ok(200)["version"]
        .as_u64()
        .unwrap();
    send(
        Method::PATCH,
        conversation.clone(),
        Some(json!({"title": "x"})),
        format!("W/\"{version}\""),
    )
    .await
    .problem(412, "precondition_failed");
    send(
        Method::PATCH,
        conversation.clone(),
        Some(json!({"title": "x"})),
        format!("\"1\", \"{version}\""),
    )
    .await
    .ok(200);
}
