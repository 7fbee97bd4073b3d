use std::collections::HashSet;

use copilot_domain::access::{authorize_read, can_read, list_viewer};
use copilot_domain::conversation::{
    Conversation, ConversationQuery, ConversationStatus, ConversationUpdate, ListViewer,
    MessageRole, NewMessage, ShareAudience, TenantAccess,
};
use copilot_domain::cursor::{CursorKey, ListCursor};
use copilot_domain::{ConversationId, Principal, TenantId, TenantRole};
use serde_json::Map;

use super::{create, fresh_tenant, new_conversation, user};
use crate::{StoreError, StoreSet};

fn query(
    t: &TenantId,
    viewer: ListViewer,
    status: ConversationStatus,
    limit: u32,
    cursor: Option<&str>,
) -> ConversationQuery {
    let after =
        cursor.map(|c| ListCursor::decode(c, status, &CursorKey::default()).expect("valid cursor"));
    ConversationQuery::new(t.clone(), viewer, status, Some(limit), after).expect("valid query")
}

/// Walks every page; checks each page is full except the last and returns all items.
async fn walk(
    s: &StoreSet,
    t: &TenantId,
    viewer: ListViewer,
    status: ConversationStatus,
    limit: u32,
) -> Vec<Conversation> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for page_no in 0.. {
        let page = s
            .conversations
            .list_conversations(&query(t, viewer.clone(), status, limit, cursor.as_deref()))
            .await
            .unwrap();
        let n = page.items.len();
        all.extend(page.items);
        match page.next_cursor {
            Some(next) => {
                assert_eq!(
                    n, limit as usize,
                    "page {page_no} is short but not the last"
                );
                cursor = Some(next);
            }
            None => break,
        }
        assert!(page_no < 10_000, "pagination does not end");
    }
    all
}

fn expected_order(mut rows: Vec<Conversation>) -> Vec<ConversationId> {
    rows.sort_by_key(|c| std::cmp::Reverse((c.last_activity_at(), c.id)));
    rows.into_iter().map(|c| c.id).collect()
}

fn message(content: &str) -> NewMessage {
    NewMessage {
        role: MessageRole::User,
        content: content.into(),
        metadata: Map::new(),
        author_id: None,
    }
}

pub async fn conversation_create_get_update_delete(s: &StoreSet) {
    let t = fresh_tenant();
    let mut new = new_conversation(
        &t,
        Some("owner"),
        ShareAudience::Private,
        TenantAccess::View,
    );
    new.persona_id = Some("persona-1".into());
    new.jurisdictions = vec!["EU".into(), "US-CA".into()];
    let c = s.conversations.create_conversation(&new).await.unwrap();
    assert_eq!(
        (c.tenant_id.clone(), c.user_id.clone()),
        (t.clone(), Some(user("owner")))
    );
    assert_eq!(
        (c.message_count, c.last_message_at, c.archived_at),
        (0, None, None)
    );
    assert_eq!(c.jurisdictions, ["EU", "US-CA"]);
    assert_eq!(c.created_at, c.updated_at);
    assert_eq!(
        s.conversations.get_conversation(&t, &c.id).await.unwrap(),
        Some(c.clone())
    );

    let update = ConversationUpdate {
        title: Some(None),
        share_audience: Some(ShareAudience::Tenant),
        tenant_access: Some(TenantAccess::Edit),
        archived: Some(true),
    };
    let u = s
        .conversations
        .update_conversation(&t, &c.id, &update, Some(c.version))
        .await
        .unwrap();
    assert_eq!(
        (u.title.clone(), u.share_audience, u.tenant_access),
        (None, ShareAudience::Tenant, TenantAccess::Edit)
    );
    assert!(u.archived_at.is_some() && u.version > c.version);
    assert_eq!(
        s.conversations.get_conversation(&t, &c.id).await.unwrap(),
        Some(u.clone())
    );
    // Archiving again keeps the first archive time; a stale version conflicts.
    let again = ConversationUpdate {
        archived: Some(true),
        ..Default::default()
    };
    let u2 = s
        .conversations
        .update_conversation(&t, &c.id, &again, None)
        .await
        .unwrap();
    assert_eq!(u2.archived_at, u.archived_at);
    let stale = s
        .conversations
        .update_conversation(&t, &c.id, &again, Some(c.version))
        .await
        .unwrap_err();
    assert!(matches!(stale, StoreError::VersionConflict { current: Some(v) } if v == u2.version));
    let unarchive = ConversationUpdate {
        archived: Some(false),
        title: Some(Some("back".into())),
        ..Default::default()
    };
    let u3 = s
        .conversations
        .update_conversation(&t, &c.id, &unarchive, None)
        .await
        .unwrap();
    assert_eq!((u3.archived_at, u3.title.as_deref()), (None, Some("back")));

    assert!(matches!(
        s.conversations
            .delete_conversation(&t, &c.id, Some(c.version))
            .await,
        Err(StoreError::VersionConflict { .. })
    ));
    let deleted = s
        .conversations
        .delete_conversation(&t, &c.id, Some(u3.version))
        .await
        .unwrap();
    assert!(deleted > u3.version);
    assert_eq!(
        s.conversations.get_conversation(&t, &c.id).await.unwrap(),
        None
    );
    assert!(matches!(
        s.conversations.delete_conversation(&t, &c.id, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.conversations
            .update_conversation(&t, &c.id, &again, None)
            .await,
        Err(StoreError::NotFound)
    ));
}

pub async fn conversations_are_isolated_by_tenant(s: &StoreSet) {
    let t = fresh_tenant();
    let other = fresh_tenant();
    let c = create(s, &t, Some("owner")).await;
    assert_eq!(
        s.conversations
            .get_conversation(&other, &c.id)
            .await
            .unwrap(),
        None
    );
    let upd = ConversationUpdate {
        title: Some(Some("x".into())),
        ..Default::default()
    };
    assert!(matches!(
        s.conversations
            .update_conversation(&other, &c.id, &upd, None)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.conversations
            .append_message(&other, &c.id, &message("x"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.conversations
            .delete_conversation(&other, &c.id, None)
            .await,
        Err(StoreError::NotFound)
    ));
    let page = s
        .conversations
        .list_conversations(&query(
            &other,
            ListViewer::Everyone,
            ConversationStatus::All,
            100,
            None,
        ))
        .await
        .unwrap();
    assert!(page.items.is_empty());
    assert!(
        s.conversations
            .get_conversation(&t, &c.id)
            .await
            .unwrap()
            .is_some()
    );
}

/// DESIGN.md section 9, item 8: pagination stopped after page 2, skipped conversations without
/// messages, and filtered access after LIMIT (short pages).
pub async fn regression_08_pagination_walks_every_conversation_once(s: &StoreSet) {
    let t = fresh_tenant();
    let mut created = Vec::new();
    for i in 0..250 {
        let c = create(s, &t, Some("owner")).await;
        created.push(c.id);
        // Every third gets a message (so activity order differs from creation order).
        if i % 3 == 0 {
            s.conversations
                .append_message(&t, &c.id, &message("hi"))
                .await
                .unwrap();
        }
        if i % 5 == 0 {
            let archive = ConversationUpdate {
                archived: Some(true),
                ..Default::default()
            };
            s.conversations
                .update_conversation(&t, &c.id, &archive, None)
                .await
                .unwrap();
        }
    }
    let mut rows = Vec::new();
    for id in &created {
        rows.push(
            s.conversations
                .get_conversation(&t, id)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for status in [
        ConversationStatus::Active,
        ConversationStatus::Archived,
        ConversationStatus::All,
    ] {
        let want = expected_order(
            rows.iter()
                .filter(|c| c.matches_status(status))
                .cloned()
                .collect(),
        );
        let got: Vec<_> = walk(s, &t, ListViewer::Everyone, status, 7)
            .await
            .into_iter()
            .map(|c| c.id)
            .collect();
        let unique: HashSet<_> = got.iter().collect();
        assert_eq!(
            unique.len(),
            got.len(),
            "{status:?}: a conversation appeared twice"
        );
        assert_eq!(
            got, want,
            "{status:?}: every conversation exactly once, in activity order"
        );
    }
    assert_eq!(
        walk(s, &t, ListViewer::Everyone, ConversationStatus::All, 7)
            .await
            .len(),
        250
    );
}

pub async fn list_pages_stay_full_under_the_access_rule(s: &StoreSet) {
    let t = fresh_tenant();
    let mut visible_to_bob = Vec::new();
    for i in 0..60 {
        // Mostly colleagues' private conversations, which bob must not see, interleaved with
        // ones he may see; filtering after LIMIT would make short pages.
        let (owner, audience) = match i % 6 {
            0 => (Some("bob"), ShareAudience::Private),
            1 => (Some("carol"), ShareAudience::Tenant),
            2 => (None, ShareAudience::Private),
            _ => (Some("carol"), ShareAudience::Private),
        };
        let c = s
            .conversations
            .create_conversation(&new_conversation(&t, owner, audience, TenantAccess::View))
            .await
            .unwrap();
        if i % 6 < 3 {
            visible_to_bob.push(c);
        }
    }
    let got: Vec<_> = walk(
        s,
        &t,
        ListViewer::User(user("bob")),
        ConversationStatus::Active,
        4,
    )
    .await
    .into_iter()
    .map(|c| c.id)
    .collect();
    assert_eq!(got, expected_order(visible_to_bob));
    assert_eq!(
        walk(s, &t, ListViewer::Everyone, ConversationStatus::Active, 4)
            .await
            .len(),
        60
    );
}

pub async fn list_rejects_an_invalid_cursor(s: &StoreSet) {
    let t = fresh_tenant();
    for _ in 0..3 {
        create(s, &t, Some("owner")).await;
    }
    let page = s
        .conversations
        .list_conversations(&query(
            &t,
            ListViewer::Everyone,
            ConversationStatus::Active,
            2,
            None,
        ))
        .await
        .unwrap();
    let cursor = page.next_cursor.expect("more pages");
    assert!(ListCursor::decode(&cursor, ConversationStatus::Active, &CursorKey::default()).is_ok());
    let mut tampered = cursor.clone().into_bytes();
    let i = tampered.len() / 2;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert!(
        ListCursor::decode(&tampered, ConversationStatus::Active, &CursorKey::default()).is_err(),
        "a tampered cursor is an error"
    );
    assert!(
        ListCursor::decode("garbage", ConversationStatus::Active, &CursorKey::default()).is_err()
    );
    assert!(
        ListCursor::decode(&cursor, ConversationStatus::Archived, &CursorKey::default()).is_err(),
        "a cursor of another listing"
    );
}

pub async fn list_limit_is_validated_not_clamped(_s: &StoreSet) {
    let t = fresh_tenant();
    for bad in [0, 101, 1000] {
        assert!(
            ConversationQuery::new(
                t.clone(),
                ListViewer::Everyone,
                ConversationStatus::Active,
                Some(bad),
                None
            )
            .is_err()
        );
    }
    let q = ConversationQuery::new(
        t,
        ListViewer::Everyone,
        ConversationStatus::Active,
        None,
        None,
    )
    .unwrap();
    assert_eq!(q.limit, 20);
}

/// The access rule inside the list query agrees with the read rule of DESIGN.md 3.6, for every
/// kind of conversation and every kind of principal, and a hit in `get` is checked the same way.
pub async fn access_list_matches_the_read_rule(s: &StoreSet) {
    let t = fresh_tenant();
    let kinds = [
        (Some("owner"), ShareAudience::Private, TenantAccess::View),
        (Some("owner"), ShareAudience::Tenant, TenantAccess::View),
        (Some("owner"), ShareAudience::Tenant, TenantAccess::Edit),
        (Some("owner"), ShareAudience::Public, TenantAccess::View),
        (None, ShareAudience::Private, TenantAccess::View),
        (
            Some("colleague"),
            ShareAudience::Private,
            TenantAccess::View,
        ),
    ];
    let mut all = Vec::new();
    for (owner, audience, access) in kinds {
        all.push(
            s.conversations
                .create_conversation(&new_conversation(&t, owner, audience, access))
                .await
                .unwrap(),
        );
    }
    let principals = [
        Principal::user(&t, &user("owner"), TenantRole::Member),
        Principal::user(&t, &user("colleague"), TenantRole::Member),
        Principal::user(&t, &user("admin"), TenantRole::Admin),
        Principal::service("svc"),
    ];
    for p in &principals {
        let viewer = list_viewer(p, &t).unwrap();
        let listed: HashSet<_> = walk(s, &t, viewer, ConversationStatus::All, 100)
            .await
            .into_iter()
            .map(|c| c.id)
            .collect();
        for c in &all {
            let stored = s
                .conversations
                .get_conversation(&t, &c.id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                listed.contains(&c.id),
                can_read(p, &stored),
                "{p:?} listing {:?}/{:?}",
                c.user_id,
                c.share_audience
            );
        }
    }
    // Another tenant's user: no listing at all, and only the public one by id.
    let stranger = Principal::user(&fresh_tenant(), &user("owner"), TenantRole::Admin);
    assert!(list_viewer(&stranger, &t).is_err());
    let readable: Vec<_> = all
        .iter()
        .filter(|c| authorize_read(&stranger, c).is_ok())
        .map(|c| c.share_audience)
        .collect();
    assert_eq!(readable, [ShareAudience::Public]);
}

/// A walk of the list while conversations move (docs/api.md): the order is by activity, newest
/// first; a conversation that gets a message mid-walk moves to the front, so the walk, already
/// past the front, does not return it again (it is not returned twice; had it been still ahead
/// of the cursor, the walk would miss it: the client learns of it from the list stream or a
/// fresh first page). Everything that did not move is returned exactly once.
pub async fn list_walk_while_a_conversation_moves(s: &StoreSet) {
    let t = fresh_tenant();
    let mut ids = Vec::new();
    for _ in 0..9 {
        ids.push(create(s, &t, Some("owner")).await.id);
        // Distinct creation instants (microsecond clocks can tie).
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let viewer = ListViewer::Everyone;
    let status = ConversationStatus::Active;
    let first = s
        .conversations
        .list_conversations(&query(&t, viewer.clone(), status, 3, None))
        .await
        .unwrap();
    let first_ids: Vec<ConversationId> = first.items.iter().map(|c| c.id).collect();
    // Newest first: the last created leads.
    assert_eq!(first_ids, [ids[8], ids[7], ids[6]], "ordered by activity");
    // One of the first page gets a message: it moves to the front, behind the walk.
    let moved = ids[7];
    s.conversations
        .append_message(
            &t,
            &moved,
            &NewMessage {
                role: MessageRole::User,
                content: "hello".into(),
                metadata: Map::new(),
                author_id: Some(user("owner")),
            },
        )
        .await
        .unwrap();
    let mut seen: Vec<ConversationId> = first_ids.clone();
    let mut cursor = first.next_cursor;
    while let Some(c) = cursor {
        let page = s
            .conversations
            .list_conversations(&query(&t, viewer.clone(), status, 3, Some(&c)))
            .await
            .unwrap();
        seen.extend(page.items.iter().map(|c| c.id));
        cursor = page.next_cursor;
    }
    let unique: HashSet<ConversationId> = seen.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a conversation was returned twice"
    );
    assert_eq!(unique.len(), 9, "every conversation once");
    // A fresh first page shows the moved one in front.
    let fresh = s
        .conversations
        .list_conversations(&query(&t, viewer, status, 3, None))
        .await
        .unwrap();
    assert_eq!(
        fresh.items[0].id, moved,
        "activity moves a conversation to the front"
    );
}
