use std::collections::HashSet;

use reqwest::Method;
use serde_json::json;

use crate::{OTHER_TENANT, TENANT, TestServer, Who, conversation};

fn conversations() -> String {
    format!("/v1/tenants/{TENANT}/conversations")
}

#[tokio::test]
async fn create_rules_and_get() {
    let s = TestServer::start().await;
    let path = conversations();
    let r = s
        .post(
            &path,
            Who::Owner,
            json!({"title": "Plan", "jurisdictions": ["EU"]}),
        )
        .await;
    let c = r.ok(201);
    assert_eq!(
        (
            c["userId"].as_str(),
            c["shareAudience"].as_str(),
            c["tenantAccess"].as_str()
        ),
        (Some("alice"), Some("private"), Some("view"))
    );
    assert_eq!(
        (c["messageCount"].as_u64(), c["archivedAt"].is_null()),
        (Some(0), true)
    );
    assert_eq!(r.etag(), Some(format!("\"{}\"", c["version"])));
    let id = c["id"].as_str().unwrap();

    // Only a service sets userId (another user, or null for a system conversation).
    s.post(&path, Who::Owner, json!({"userId": "bob"}))
        .await
        .problem(403, "forbidden");
    s.post(&path, Who::Admin, json!({"userId": "bob"}))
        .await
        .problem(403, "forbidden");
    s.post(&path, Who::Owner, json!({"userId": null}))
        .await
        .problem(403, "forbidden");
    s.post(&path, Who::Owner, json!({"userId": "alice"}))
        .await
        .ok(201);
    assert!(
        s.post(&path, Who::Service, json!({"userId": null}))
            .await
            .ok(201)["userId"]
            .is_null()
    );
    assert_eq!(
        s.post(&path, Who::Service, json!({"userId": "bob"}))
            .await
            .ok(201)["userId"],
        "bob"
    );
    s.post(&path, Who::Stranger, json!({}))
        .await
        .problem(404, "not_found");
    s.post(
        &path,
        Who::Owner,
        json!({"shareAudience": "world", "title": 5}),
    )
    .await
    .problem(422, "validation_failed");

    assert_eq!(
        s.get(&format!("{path}/{id}"), Who::Owner).await.ok(200)["title"],
        "Plan"
    );
    s.get(&format!("{path}/{id}"), Who::Colleague)
        .await
        .problem(404, "not_found");
    s.get(&format!("{path}/{id}"), Who::Admin)
        .await
        .problem(404, "not_found");
    s.get(&format!("{path}/{id}"), Who::Stranger)
        .await
        .problem(404, "not_found");
    s.get(&format!("{path}/not-a-uuid"), Who::Owner)
        .await
        .problem(400, "invalid_id");
    s.get(
        &format!("{path}/0192b2c4-6f1e-7cc1-9a4e-2b3c4d5e6f70"),
        Who::Owner,
    )
    .await
    .problem(404, "not_found");
}

#[tokio::test]
async fn list_pages_filter_and_cursor_errors() {
    let s = TestServer::start().await;
    let path = conversations();
    let mut mine = HashSet::new();
    for i in 0..23 {
        let owner = if i % 2 == 0 {
            Who::Owner
        } else {
            Who::Colleague
        };
        let id = conversation(&s, owner, json!({"title": format!("c{i}")})).await;
        if owner == Who::Owner {
            mine.insert(id);
        }
    }
    // alice walks her own conversations in pages of 5: full pages, each once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}?limit=5&cursor={c}"),
            None => format!("{path}?limit=5"),
        };
        let r = s.get(&url, Who::Owner).await;
        let page = r.ok(200);
        let items = page["items"].as_array().unwrap();
        seen.extend(items.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        match page["nextCursor"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), 5);
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), mine.len());
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), mine);
    // The service sees all 23; archived is empty.
    assert_eq!(
        s.get(&format!("{path}?limit=100&status=all"), Who::Service)
            .await
            .ok(200)["items"]
            .as_array()
            .unwrap()
            .len(),
        23
    );
    assert!(
        s.get(&format!("{path}?status=archived"), Who::Service)
            .await
            .ok(200)["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let first = s.get(&format!("{path}?limit=2"), Who::Owner).await;
    let cursor = first.body["nextCursor"].as_str().unwrap().to_owned();
    s.get(&format!("{path}?cursor=garbage"), Who::Owner)
        .await
        .problem(400, "invalid_cursor");
    s.get(
        &format!("{path}?cursor={cursor}&status=archived"),
        Who::Owner,
    )
    .await
    .problem(400, "invalid_cursor");
    let mut tampered = cursor.into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    s.get(
        &format!("{path}?cursor={}", String::from_utf8(tampered).unwrap()),
        Who::Owner,
    )
    .await
    .problem(400, "invalid_cursor");
    for bad in ["limit=0", "limit=101", "limit=x", "status=deleted"] {
        s.get(&format!("{path}?{bad}"), Who::Owner)
            .await
            .problem(400, "invalid_request");
    }
    s.get(
        &format!("/v1/tenants/{OTHER_TENANT}/conversations"),
        Who::Owner,
    )
    .await
    .problem(404, "not_found");
}

#[tokio::test]
async fn update_archive_and_delete() {
    let s = TestServer::start().await;
    let id = conversation(&s, Who::Owner, json!({"shareAudience": "tenant"})).await;
    let path = format!("{}/{id}", conversations());
    s.patch(&path, Who::Colleague, json!({"title": "mine now"}))
        .await
        .problem(403, "forbidden");
    let r = s
        .patch(
            &path,
            Who::Admin,
            json!({"title": "renamed", "archived": true}),
        )
        .await;
    let v = r.ok(200)["version"].as_u64().unwrap();
    assert!(r.body["archivedAt"].is_string());
    // Archived: read-only for messages.
    let messages = format!("{path}/messages");
    s.post(
        &messages,
        Who::Owner,
        json!({"role": "user", "content": "hi"}),
    )
    .await
    .problem(409, "conversation_archived");
    s.send(
        Method::PATCH,
        &path,
        Who::Owner,
        Some(json!({"archived": false})),
        &[("if-match", "\"1\"")],
    )
    .await
    .problem(412, "precondition_failed");
    s.send(
        Method::PATCH,
        &path,
        Who::Owner,
        Some(json!({"archived": false})),
        &[("if-match", &format!("\"{v}\""))],
    )
    .await
    .ok(200);
    s.post(
        &messages,
        Who::Owner,
        json!({"role": "user", "content": "hi"}),
    )
    .await
    .ok(201);
    s.patch(&path, Who::Owner, json!({"shareAudience": "everyone"}))
        .await
        .problem(422, "validation_failed");
    s.delete(&path, Who::Colleague)
        .await
        .problem(403, "forbidden");
    s.delete(&path, Who::Owner).await.ok(204);
    s.get(&path, Who::Owner).await.problem(404, "not_found");
    s.get(&messages, Who::Owner).await.problem(404, "not_found");
}

#[tokio::test]
async fn messages_append_list_and_delete() {
    let s = TestServer::start().await;
    let id = conversation(&s, Who::Owner, json!({"shareAudience": "tenant"})).await;
    let messages = format!("{}/{id}/messages", conversations());
    let first = s
        .post(
            &messages,
            Who::Owner,
            json!({"role": "user", "content": "one", "metadata": {"k": 1}}),
        )
        .await;
    assert_eq!(first.ok(201)["seq"], 1);
    assert_eq!(first.body["authorId"], "alice");
    s.post(
        &messages,
        Who::Owner,
        json!({"role": "assistant", "content": "x"}),
    )
    .await
    .problem(403, "forbidden");
    s.post(
        &messages,
        Who::Colleague,
        json!({"role": "user", "content": "x"}),
    )
    .await
    .problem(403, "forbidden");
    let reply = s
        .post(
            &messages,
            Who::Service,
            json!({"role": "assistant", "content": "two"}),
        )
        .await;
    assert_eq!(
        (
            reply.ok(201)["seq"].as_u64(),
            reply.body["authorId"].is_null()
        ),
        (Some(2), true)
    );
    for i in 3..=6 {
        s.post(
            &messages,
            Who::Owner,
            json!({"role": "user", "content": format!("m{i}")}),
        )
        .await
        .ok(201);
    }
    // Size limits: content over COPILOT_MAX_MESSAGE_BYTES (1 KiB here) and metadata over 64 KiB.
    s.post(
        &messages,
        Who::Owner,
        json!({"role": "user", "content": "x".repeat(1025)}),
    )
    .await
    .problem(413, "payload_too_large");
    s.post(
        &messages,
        Who::Owner,
        json!({"role": "user", "content": "x", "metadata": {"k": "x".repeat(70_000)}}),
    )
    .await
    .problem(413, "payload_too_large");
    s.post(&messages, Who::Owner, json!({"role": "robot"}))
        .await
        .problem(422, "validation_failed");

    let page = s.get(&format!("{messages}?limit=2"), Who::Colleague).await;
    let seqs: Vec<_> = page.ok(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        (seqs, page.body["nextBefore"].as_u64()),
        (vec![5, 6], Some(5))
    );
    let older = s
        .get(&format!("{messages}?limit=2&before=5"), Who::Owner)
        .await;
    assert_eq!(older.ok(200)["items"][0]["seq"], 3);
    let after = s.get(&format!("{messages}?after=4"), Who::Owner).await;
    assert_eq!(after.ok(200)["items"].as_array().unwrap().len(), 2);
    for bad in [
        "limit=0",
        "limit=501",
        "before=-1",
        "after=x",
        "before=3&after=1",
        "includeDeleted=maybe",
    ] {
        s.get(&format!("{messages}?{bad}"), Who::Owner)
            .await
            .problem(400, "invalid_request");
    }

    // A colleague may delete the messages it wrote, not others' (tenant + view).
    let first_id = first.body["id"].as_str().unwrap();
    s.delete(&format!("{messages}/{first_id}"), Who::Colleague)
        .await
        .problem(403, "forbidden");
    s.delete(&format!("{messages}/{first_id}"), Who::Owner)
        .await
        .ok(204);
    s.delete(&format!("{messages}/{first_id}"), Who::Owner)
        .await
        .ok(204);
    s.delete(
        &format!("{messages}/0192b2c4-6f1e-7cc1-9a4e-2b3c4d5e6f70"),
        Who::Owner,
    )
    .await
    .problem(404, "not_found");
    s.delete(&format!("{messages}/nope"), Who::Owner)
        .await
        .problem(400, "invalid_id");
    let all = s
        .get(&format!("{messages}?includeDeleted=true"), Who::Owner)
        .await;
    let tomb = &all.ok(200)["items"][0];
    assert_eq!(
        (
            tomb["seq"].as_u64(),
            tomb["content"].is_null(),
            tomb["deletedBy"].as_str()
        ),
        (Some(1), true, Some("alice"))
    );
    let visible = s.get(&messages, Who::Owner).await;
    assert_eq!(visible.ok(200)["items"].as_array().unwrap().len(), 5);
    let conv = s
        .get(&format!("{}/{id}", conversations()), Who::Owner)
        .await;
    assert_eq!(conv.ok(200)["messageCount"], 5);
}

#[tokio::test]
async fn public_share_link_is_read_only_for_other_tenants() {
    let s = TestServer::start().await;
    let id = conversation(
        &s,
        Who::Owner,
        json!({"shareAudience": "public", "title": "shared"}),
    )
    .await;
    let path = format!("{}/{id}", conversations());
    s.post(
        &format!("{path}/messages"),
        Who::Owner,
        json!({"role": "user", "content": "hello"}),
    )
    .await
    .ok(201);
    assert_eq!(s.get(&path, Who::Stranger).await.ok(200)["title"], "shared");
    assert_eq!(
        s.get(&format!("{path}/messages"), Who::Stranger)
            .await
            .ok(200)["items"][0]["content"],
        "hello"
    );
    s.post(
        &format!("{path}/messages"),
        Who::Stranger,
        json!({"role": "user", "content": "x"}),
    )
    .await
    .problem(403, "forbidden");
    s.patch(&path, Who::Stranger, json!({"title": "x"}))
        .await
        .problem(403, "forbidden");
    s.delete(&path, Who::Stranger)
        .await
        .problem(403, "forbidden");
    // Never listed outside its tenant.
    s.get(&conversations(), Who::Stranger)
        .await
        .problem(404, "not_found");
    // Back to private: the share link is gone.
    s.patch(&path, Who::Owner, json!({"shareAudience": "private"}))
        .await
        .ok(200);
    s.get(&path, Who::Stranger).await.problem(404, "not_found");
}

/// A cursor with a valid tag (made with the server's key) but an instant no store can hold,
/// or one made with another key, is 400 `invalid_cursor` on every backend (forged cursors were
/// a 500 on PostgreSQL).
#[tokio::test]
async fn a_forged_cursor_is_400_invalid_cursor() {
    use copilot_domain::ConversationId;
    use copilot_domain::conversation::ConversationStatus;
    use copilot_domain::cursor::{CursorKey, ListCursor};
    let s = TestServer::start().await;
    for micros in [i64::MIN, -1, i64::MAX] {
        let forged = ListCursor {
            status: ConversationStatus::Active,
            last_activity_micros: micros,
            id: ConversationId::new_v7(chrono::Utc::now()),
        }
        .encode(&CursorKey::derive(crate::SECRET.as_bytes()));
        s.get(
            &format!("/v1/tenants/{TENANT}/conversations?cursor={forged}"),
            Who::Owner,
        )
        .await
        .problem(400, "invalid_cursor");
    }
    // A real cursor, signed by another deployment: refused.
    let foreign = ListCursor {
        status: ConversationStatus::Active,
        last_activity_micros: 1_700_000_000_000_000,
        id: ConversationId::new_v7(chrono::Utc::now()),
    }
    .encode(&CursorKey::derive(b"another deployment"));
    s.get(
        &format!("/v1/tenants/{TENANT}/conversations?cursor={foreign}"),
        Who::Owner,
    )
    .await
    .problem(400, "invalid_cursor");
}
