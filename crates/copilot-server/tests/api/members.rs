use serde_json::json;

use crate::{TENANT, TestServer, Who};

#[tokio::test]
async fn members_lifecycle_and_access() {
    let s = TestServer::start().await;
    let list = format!("/v1/tenants/{TENANT}/members");
    let bob = format!("/v1/tenants/{TENANT}/members/bob");
    s.get(&list, Who::Owner).await.problem(403, "forbidden");
    s.get(&list, Who::Stranger).await.problem(404, "not_found");
    s.put(
        &bob,
        Who::Owner,
        json!({"role": "member", "status": "active"}),
    )
    .await
    .problem(403, "forbidden");
    let r = s
        .put(
            &bob,
            Who::Admin,
            json!({"role": "member", "status": "active"}),
        )
        .await;
    assert_eq!(r.ok(200)["status"], "active");
    s.put(
        &format!("/v1/tenants/{TENANT}/members/alice"),
        Who::Service,
        json!({"role": "admin", "status": "active"}),
    )
    .await
    .ok(200);
    let items = s.get(&list, Who::Admin).await;
    let names: Vec<_> = items.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["userId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    s.put(&bob, Who::Admin, json!({"role": "boss", "status": "maybe"}))
        .await
        .problem(422, "validation_failed");
    s.delete(&bob, Who::Admin).await.ok(204);
    s.delete(&bob, Who::Admin).await.problem(404, "not_found");
}

#[tokio::test]
async fn required_memberships_gate_users_but_not_services() {
    let s = TestServer::start_with(true).await;
    let path = format!("/v1/tenants/{TENANT}/config/effective");
    s.get(&path, Who::Owner).await.problem(403, "forbidden");
    s.get(&path, Who::Service).await.ok(200);
    let alice = format!("/v1/tenants/{TENANT}/members/alice");
    s.put(
        &alice,
        Who::Service,
        json!({"role": "member", "status": "active"}),
    )
    .await
    .ok(200);
    s.get(&path, Who::Owner).await.ok(200);
    // The membership's admin role counts: alice (a member by token) may then write tenant config.
    s.put(
        &format!("/v1/tenants/{TENANT}/config"),
        Who::Owner,
        json!({}),
    )
    .await
    .problem(403, "forbidden");
    s.put(
        &alice,
        Who::Service,
        json!({"role": "admin", "status": "active"}),
    )
    .await
    .ok(200);
    s.put(
        &format!("/v1/tenants/{TENANT}/config"),
        Who::Owner,
        json!({}),
    )
    .await
    .ok(200);
    // A suspension takes effect on the next request.
    s.put(
        &alice,
        Who::Service,
        json!({"role": "admin", "status": "suspended"}),
    )
    .await
    .ok(200);
    s.get(&path, Who::Owner).await.problem(403, "forbidden");
}

/// Issue "Hardening" item 9: the membership lookup of every user request had no deadline, so a
/// database that stopped answering held requests forever. With the memberships table locked,
/// a user's request answers 503 `store_unavailable` within the store deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_membership_lookup_has_the_store_deadline() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use copilot_store::{PostgresOptions, PostgresStore};
    use sqlx::Connection;

    let url = copilot_store::conformance::fresh_postgres_database().await;
    let store = Arc::new(
        PostgresStore::open(PostgresOptions {
            notify_changes: true,
            ..PostgresOptions::new(&url)
        })
        .await
        .expect("postgres"),
    );
    let server = TestServer::start_over(
        crate::TestStore::Postgres(store),
        copilot_server::state::ServiceSettings {
            store_timeout: Duration::from_millis(500),
            ..TestServer::default_settings(true)
        },
    )
    .await;
    let mut locker = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::raw_sql("BEGIN; LOCK TABLE copilot.tenant_memberships IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("lock");
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        server.get(&format!("/v1/tenants/{TENANT}/llm-policy"), Who::Owner),
    )
    .await
    .expect("the request hung on the membership lookup");
    r.problem(503, "store_unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let _ = sqlx::raw_sql("ROLLBACK").execute(&mut locker).await;
}
