use reqwest::Method;
use serde_json::json;

use crate::{OTHER_TENANT, TENANT, TestServer, Who};

#[tokio::test]
async fn global_level_lifecycle_and_access() {
    let s = TestServer::start().await;
    let path = "/v1/config/global";
    s.get(path, Who::Owner).await.problem(404, "not_found");
    s.put(path, Who::Admin, json!({"mergeMaxMessages": 10}))
        .await
        .problem(403, "forbidden");
    let r = s
        .put(path, Who::Service, json!({"mergeMaxMessages": 10}))
        .await;
    let v = r.ok(200)["version"].as_u64().unwrap();
    assert_eq!(r.body["mergeMaxMessages"], 10);
    assert_eq!(r.etag(), Some(format!("\"{v}\"")));
    // Anyone authenticated reads it.
    assert_eq!(
        s.get(path, Who::Stranger).await.ok(200)["mergeMaxMessages"],
        10
    );
    // Merge patch with its own media type.
    let r = s
        .raw(
            Method::PATCH,
            path,
            Who::Service,
            br#"{"pathMaxMessages": 7, "mergeMaxMessages": null}"#.to_vec(),
            "application/merge-patch+json",
        )
        .await;
    let body = r.ok(200);
    assert_eq!(body["pathMaxMessages"], 7);
    assert!(
        body.get("mergeMaxMessages").is_none(),
        "a null clears the field: {body}"
    );
    s.send(
        Method::PATCH,
        path,
        Who::Service,
        Some(json!({})),
        &[("if-match", &format!("\"{v}\""))],
    )
    .await
    .problem(412, "precondition_failed");
    s.delete(path, Who::Admin).await.problem(403, "forbidden");
    s.delete(path, Who::Service).await.ok(204);
    s.delete(path, Who::Service).await.problem(404, "not_found");
}

#[tokio::test]
async fn tenant_and_user_levels_and_effective_config() {
    let s = TestServer::start().await;
    let tenant = format!("/v1/tenants/{TENANT}/config");
    let alice = format!("/v1/tenants/{TENANT}/users/alice/config");
    let effective = format!("/v1/tenants/{TENANT}/config/effective");

    s.put(&tenant, Who::Owner, json!({"pathMaxMessages": 1}))
        .await
        .problem(403, "forbidden");
    s.put(&tenant, Who::Stranger, json!({"pathMaxMessages": 1}))
        .await
        .problem(404, "not_found");
    s.put(
        &tenant,
        Who::Admin,
        json!({"pathMaxMessages": 30, "autoCompactEnabled": false}),
    )
    .await
    .ok(200);
    assert_eq!(
        s.get(&tenant, Who::Colleague).await.ok(200)["pathMaxMessages"],
        30
    );

    // A user writes its own level; a colleague may not read or write it; an admin may.
    s.put(&alice, Who::Owner, json!({"pathMaxMessages": 40}))
        .await
        .ok(200);
    s.get(&alice, Who::Colleague)
        .await
        .problem(403, "forbidden");
    s.put(&alice, Who::Colleague, json!({}))
        .await
        .problem(403, "forbidden");
    assert_eq!(
        s.get(&alice, Who::Admin).await.ok(200)["pathMaxMessages"],
        40
    );
    s.get(&alice, Who::Stranger).await.problem(404, "not_found");

    let r = s.get(&effective, Who::Owner).await;
    let e = r.ok(200);
    assert_eq!(e["pathMaxMessages"], 40);
    assert_eq!(e["sources"]["pathMaxMessages"], "user");
    assert_eq!(e["autoCompactEnabled"], false);
    assert_eq!(e["sources"]["autoCompactEnabled"], "tenant");
    assert_eq!(e["mergeMaxMessages"], 100);
    assert_eq!(e["sources"]["mergeMaxMessages"], "default");
    assert_eq!(e["configLevel"], "user");
    assert_eq!(e["updatedBy"], "alice");
    assert!(
        e["versions"]["user"].is_u64()
            && e["versions"]["tenant"].is_u64()
            && e["versions"]["global"].is_null()
    );

    // Another user's effective config: admins and services only.
    s.get(&format!("{effective}?userId=alice"), Who::Colleague)
        .await
        .problem(403, "forbidden");
    assert_eq!(
        s.get(&format!("{effective}?userId=alice"), Who::Admin)
            .await
            .ok(200)["pathMaxMessages"],
        40
    );
    assert_eq!(
        s.get(&format!("{effective}?userId=alice"), Who::Service)
            .await
            .ok(200)["userId"],
        "alice"
    );
    assert_eq!(
        s.get(&effective, Who::Colleague).await.ok(200)["pathMaxMessages"],
        30
    );
    s.get(&format!("{effective}?userId=no%20way"), Who::Admin)
        .await
        .problem(400, "invalid_id");
    s.get(
        &format!("/v1/tenants/{OTHER_TENANT}/config/effective"),
        Who::Owner,
    )
    .await
    .problem(404, "not_found");

    // Global and tenant writes are seen by the user at once.
    s.put(
        "/v1/config/global",
        Who::Service,
        json!({"mergeMaxMessages": 77}),
    )
    .await
    .ok(200);
    let e = s.get(&effective, Who::Owner).await;
    assert_eq!(e.body["mergeMaxMessages"], 77);
    assert_eq!(e.body["sources"]["mergeMaxMessages"], "global");

    // Validation: one error per field.
    let r = s
        .patch(
            &tenant,
            Who::Admin,
            json!({"pathMaxMessages": 0, "nope": 1, "pathCompressionThreshold": 2}),
        )
        .await;
    r.problem(422, "validation_failed");
    assert_eq!(r.body["errors"].as_array().unwrap().len(), 3);
    s.put(&tenant, Who::Admin, json!([1, 2]))
        .await
        .problem(422, "validation_failed");

    // Clearing the user's field falls back to the tenant's value.
    s.patch(&alice, Who::Owner, json!({"pathMaxMessages": null}))
        .await
        .ok(200);
    let e = s.get(&effective, Who::Owner).await;
    assert_eq!(e.body["pathMaxMessages"], 30);
    assert_eq!(
        e.body["configLevel"], "user",
        "an empty stored patch still counts"
    );
    s.delete(&alice, Who::Owner).await.ok(204);
    assert_eq!(
        s.get(&effective, Who::Owner).await.body["configLevel"],
        "tenant"
    );
    s.get(&alice, Who::Owner).await.problem(404, "not_found");
    s.put(
        "/v1/tenants/acme/users/bad%20user/config",
        Who::Admin,
        json!({}),
    )
    .await
    .problem(400, "invalid_id");
}

/// The effective configuration has an `ETag` that changes with any of its three levels (and
/// differs per user); any `GET` with an `ETag` answers a matching `If-None-Match` with an empty
/// 304, and only where the same request would have been a 200.
#[tokio::test]
async fn effective_config_etag_and_conditional_gets() {
    let s = TestServer::start().await;
    let effective = format!("/v1/tenants/{TENANT}/config/effective");
    let get_if = |path: String, who: Who, tag: String| {
        let s = &s;
        async move {
            s.send(Method::GET, &path, who, None, &[("if-none-match", &tag)])
                .await
        }
    };
    let first = s.get(&effective, Who::Owner).await;
    first.ok(200);
    let tag = first.etag().expect("effective config has an ETag");
    let r = get_if(effective.clone(), Who::Owner, tag.clone()).await;
    assert_eq!(r.status.as_u16(), 304);
    assert_eq!(r.body, serde_json::Value::Null, "a 304 has no body");
    assert_eq!(r.etag().as_deref(), Some(tag.as_str()));
    assert!(r.headers.get("content-type").is_none());
    // Weak comparison, lists and `*`.
    for condition in [format!("W/{tag}"), format!("\"x\", {tag}"), "*".to_owned()] {
        let r = get_if(effective.clone(), Who::Owner, condition.clone()).await;
        assert_eq!(r.status.as_u16(), 304, "If-None-Match: {condition}");
    }
    // Another user's answer at the same URL has another tag.
    let bob = s.get(&effective, Who::Colleague).await;
    assert_ne!(bob.etag(), Some(tag.clone()));
    get_if(effective.clone(), Who::Colleague, tag.clone())
        .await
        .ok(200);

    // Every level changes the tag: global, tenant, user, and a delete too.
    let mut previous = tag;
    let writes = [
        ("/v1/config/global".to_owned(), Who::Service),
        (format!("/v1/tenants/{TENANT}/config"), Who::Admin),
        (
            format!("/v1/tenants/{TENANT}/users/alice/config"),
            Who::Owner,
        ),
    ];
    for (i, (path, who)) in writes.iter().enumerate() {
        s.put(path, *who, json!({"mergeMaxMessages": 10 + i}))
            .await
            .ok(200);
        let r = get_if(effective.clone(), Who::Owner, previous.clone()).await;
        assert_eq!(r.ok(200)["mergeMaxMessages"], 10 + i, "after {path}");
        let tag = r.etag().expect("tag");
        assert_ne!(tag, previous, "after {path}");
        previous = tag;
    }
    s.delete(&writes[2].0, Who::Owner).await.ok(204);
    let r = get_if(effective.clone(), Who::Owner, previous.clone()).await;
    assert_eq!(r.ok(200)["mergeMaxMessages"], 11);
    assert_ne!(r.etag(), Some(previous));

    // The stored rows' GETs too; never where the same request is not a 200.
    let policy = format!("/v1/tenants/{TENANT}/llm-policy");
    let stored = s
        .put(
            &policy,
            Who::Admin,
            json!({"defaultModel": "gpt-tenant", "defaultProvider": "openai"}),
        )
        .await;
    let policy_tag = stored.etag().expect("policy tag");
    get_if(policy.clone(), Who::Admin, policy_tag.clone())
        .await
        .ok(304);
    get_if(policy.clone(), Who::Stranger, policy_tag.clone())
        .await
        .problem(404, "not_found");
    get_if(policy.clone(), Who::Nobody, policy_tag)
        .await
        .problem(401, "unauthenticated");
    let tenant_tag = s
        .get(&writes[1].0, Who::Admin)
        .await
        .etag()
        .expect("tenant level tag");
    get_if(writes[1].0.clone(), Who::Admin, tenant_tag)
        .await
        .ok(304);
}
