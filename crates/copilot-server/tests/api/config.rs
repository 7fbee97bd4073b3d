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
