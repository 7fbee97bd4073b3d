use copilot_domain::conversation::{ConversationUpdate, MessageQuery, MessageRole, NewMessage};
use copilot_domain::{ConversationId, MessageId};
use serde_json::{Map, json};

use super::{create, fresh_tenant, user};
use crate::{StoreError, StoreSet};

fn message(content: &str) -> NewMessage {
    NewMessage {
        role: MessageRole::User,
        content: content.into(),
        metadata: Map::new(),
        author_id: Some(user("owner")),
    }
}

fn seqs(items: &[copilot_domain::conversation::Message]) -> Vec<u64> {
    items.iter().map(|m| m.seq).collect()
}

/// DESIGN.md section 9, item 9: sequence numbers repeated under concurrent appends.
pub async fn regression_09_concurrent_appends_get_gapless_seq(s: &StoreSet) {
    let t = fresh_tenant();
    let c = create(s, &t, Some("owner")).await;
    let mut tasks = Vec::new();
    for writer in 0..50 {
        let store = s.conversations.clone();
        let (t, id) = (t.clone(), c.id);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..20 {
                let w = store
                    .append_message(&t, &id, &message(&format!("{writer}-{i}")))
                    .await
                    .expect("append");
                got.push(w.message.seq);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=1000).collect::<Vec<u64>>(),
        "seq 1..1000, no gap, no duplicate"
    );
    let conv = s
        .conversations
        .get_conversation(&t, &c.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conv.message_count, 1000);
    let page = s
        .conversations
        .list_messages(&t, &c.id, &MessageQuery::latest(500))
        .await
        .unwrap();
    assert_eq!(seqs(&page.items), (501..=1000).collect::<Vec<u64>>());
    // The clock is read under the lock: createdAt never goes backwards along seq.
    assert!(
        page.items
            .windows(2)
            .all(|pair| pair[0].created_at <= pair[1].created_at),
        "createdAt out of seq order"
    );
}

/// DESIGN.md section 9, item 9 (second half): multi-step writes were not atomic.
pub async fn regression_09_failed_writes_leave_nothing_behind(s: &StoreSet) {
    let t = fresh_tenant();
    let c = create(s, &t, Some("owner")).await;
    s.conversations
        .append_message(&t, &c.id, &message("one"))
        .await
        .unwrap();
    let archived = s
        .conversations
        .update_conversation(
            &t,
            &c.id,
            &ConversationUpdate {
                archived: Some(true),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        s.conversations
            .append_message(&t, &c.id, &message("two"))
            .await,
        Err(StoreError::ConversationArchived)
    ));
    let after = s
        .conversations
        .get_conversation(&t, &c.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, archived, "a refused append changed nothing");
    let mut q = MessageQuery::latest(50);
    q.include_deleted = true;
    assert_eq!(
        s.conversations
            .list_messages(&t, &c.id, &q)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    // An append to a missing conversation leaves no orphan message.
    let missing = ConversationId::new_v7(chrono::Utc::now());
    assert!(matches!(
        s.conversations
            .append_message(&t, &missing, &message("x"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.conversations.list_messages(&t, &missing, &q).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn messages_newest_and_paging(s: &StoreSet) {
    let t = fresh_tenant();
    let c = create(s, &t, Some("owner")).await;
    let mut meta = Map::new();
    meta.insert("k".into(), json!({"nested": [1, 2]}));
    for i in 1..=12 {
        let mut m = message(&format!("m{i}"));
        if i == 1 {
            m.metadata = meta.clone();
            m.role = MessageRole::System;
            m.author_id = None;
        }
        let w = s.conversations.append_message(&t, &c.id, &m).await.unwrap();
        assert_eq!(w.message.seq, i);
        assert_eq!(w.conversation.message_count, i);
    }
    let newest = s
        .conversations
        .list_messages(
            &t,
            &c.id,
            &MessageQuery::new(Some(5), None, None, false).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seqs(&newest.items), [8, 9, 10, 11, 12]);
    assert_eq!(newest.next_before, Some(8));
    let older = s
        .conversations
        .list_messages(
            &t,
            &c.id,
            &MessageQuery::new(Some(5), Some(8), None, false).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seqs(&older.items), [3, 4, 5, 6, 7]);
    assert_eq!(older.next_before, Some(3));
    let oldest = s
        .conversations
        .list_messages(
            &t,
            &c.id,
            &MessageQuery::new(Some(5), Some(3), None, false).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seqs(&oldest.items), [1, 2]);
    assert_eq!(oldest.next_before, None);
    assert_eq!(oldest.items[0].metadata, meta);
    assert_eq!(oldest.items[0].role, MessageRole::System);
    assert_eq!(oldest.items[1].content.as_deref(), Some("m2"));
    assert_eq!(oldest.items[1].author_id, Some(user("owner")));
    let after = s
        .conversations
        .list_messages(
            &t,
            &c.id,
            &MessageQuery::new(Some(4), None, Some(2), false).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seqs(&after.items), [3, 4, 5, 6]);
    assert_eq!(after.next_before, Some(3));
    let tail = s
        .conversations
        .list_messages(
            &t,
            &c.id,
            &MessageQuery::new(Some(4), None, Some(10), false).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(seqs(&tail.items), [11, 12]);
    let none = s
        .conversations
        .list_messages(
            &t,
            &c.id,
            &MessageQuery::new(Some(4), None, Some(12), false).unwrap(),
        )
        .await
        .unwrap();
    assert!(none.items.is_empty() && none.next_before.is_none());
    // Limits are validated, never clamped.
    assert!(MessageQuery::new(Some(0), None, None, false).is_err());
    assert!(MessageQuery::new(Some(501), None, None, false).is_err());
    // An empty conversation.
    let empty = create(s, &t, Some("owner")).await;
    let page = s
        .conversations
        .list_messages(&t, &empty.id, &MessageQuery::latest(50))
        .await
        .unwrap();
    assert!(page.items.is_empty() && page.next_before.is_none());
}

pub async fn messages_soft_delete_is_idempotent_and_hidden(s: &StoreSet) {
    let t = fresh_tenant();
    let c = create(s, &t, Some("owner")).await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let mut m = message(&format!("m{i}"));
        m.metadata.insert("secret".into(), json!("x"));
        ids.push(
            s.conversations
                .append_message(&t, &c.id, &m)
                .await
                .unwrap()
                .message
                .id,
        );
    }
    let first = s
        .conversations
        .soft_delete_message(&t, &c.id, &ids[1], "owner")
        .await
        .unwrap();
    assert!(first.message.is_deleted());
    assert_eq!(
        (
            first.message.content.as_deref(),
            first.message.deleted_by.as_deref()
        ),
        (None, Some("owner"))
    );
    assert!(
        first.message.metadata.is_empty(),
        "a deleted message keeps no content or metadata"
    );
    assert_eq!(first.conversation.message_count, 2);
    let again = s
        .conversations
        .soft_delete_message(&t, &c.id, &ids[1], "someone-else")
        .await
        .unwrap();
    assert_eq!(again.message, first.message, "idempotent");
    assert_eq!(
        again.conversation.version, first.conversation.version,
        "a repeat delete writes nothing"
    );
    assert_eq!(again.conversation.message_count, 2);

    let page = s
        .conversations
        .list_messages(&t, &c.id, &MessageQuery::latest(50))
        .await
        .unwrap();
    assert_eq!(seqs(&page.items), [1, 3]);
    assert_eq!(page.next_before, None);
    let mut q = MessageQuery::latest(50);
    q.include_deleted = true;
    let page = s.conversations.list_messages(&t, &c.id, &q).await.unwrap();
    assert_eq!(seqs(&page.items), [1, 2, 3]);
    assert_eq!(page.items[1].content, None, "tombstones carry no content");
    let got = s
        .conversations
        .get_message(&t, &c.id, &ids[1])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, first.message);
    assert!(matches!(
        s.conversations
            .soft_delete_message(&t, &c.id, &MessageId::new_v7(chrono::Utc::now()), "o")
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        s.conversations
            .get_message(&fresh_tenant(), &c.id, &ids[0])
            .await
            .unwrap(),
        None
    );
}

pub async fn archived_conversation_refuses_appends_and_deletes(s: &StoreSet) {
    let t = fresh_tenant();
    let c = create(s, &t, Some("owner")).await;
    let m = s
        .conversations
        .append_message(&t, &c.id, &message("x"))
        .await
        .unwrap()
        .message;
    let archive = ConversationUpdate {
        archived: Some(true),
        ..Default::default()
    };
    s.conversations
        .update_conversation(&t, &c.id, &archive, None)
        .await
        .unwrap();
    assert!(matches!(
        s.conversations
            .append_message(&t, &c.id, &message("y"))
            .await,
        Err(StoreError::ConversationArchived)
    ));
    assert!(matches!(
        s.conversations
            .soft_delete_message(&t, &c.id, &m.id, "owner")
            .await,
        Err(StoreError::ConversationArchived)
    ));
    let unarchive = ConversationUpdate {
        archived: Some(false),
        ..Default::default()
    };
    s.conversations
        .update_conversation(&t, &c.id, &unarchive, None)
        .await
        .unwrap();
    assert_eq!(
        s.conversations
            .append_message(&t, &c.id, &message("y"))
            .await
            .unwrap()
            .message
            .seq,
        2
    );
    assert!(
        s.conversations
            .soft_delete_message(&t, &c.id, &m.id, "owner")
            .await
            .is_ok()
    );
}

pub async fn message_counters_and_activity_order(s: &StoreSet) {
    let t = fresh_tenant();
    let a = create(s, &t, Some("owner")).await;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let b = create(s, &t, Some("owner")).await;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let w = s
        .conversations
        .append_message(&t, &a.id, &message("x"))
        .await
        .unwrap();
    let conv = w.conversation;
    assert_eq!(conv.last_message_at, Some(w.message.created_at));
    assert_eq!(conv.updated_at, w.message.created_at);
    assert_eq!(conv.message_count, 1);
    assert!(conv.version > a.version);
    assert!(conv.last_activity_at() > b.created_at);
    assert_eq!(
        s.conversations.get_conversation(&t, &a.id).await.unwrap(),
        Some(conv)
    );
    // The conversation with the newest message comes first.
    let q = copilot_domain::conversation::ConversationQuery::new(
        t.clone(),
        copilot_domain::conversation::ListViewer::Everyone,
        copilot_domain::conversation::ConversationStatus::Active,
        Some(10),
        None,
    )
    .unwrap();
    let page = s.conversations.list_conversations(&q).await.unwrap();
    assert_eq!(
        page.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        [a.id, b.id]
    );
    assert_eq!(page.next_cursor, None);
}

pub async fn delete_conversation_removes_its_messages(s: &StoreSet) {
    let t = fresh_tenant();
    let c = create(s, &t, Some("owner")).await;
    let m = s
        .conversations
        .append_message(&t, &c.id, &message("x"))
        .await
        .unwrap()
        .message;
    s.conversations
        .delete_conversation(&t, &c.id, None)
        .await
        .unwrap();
    assert_eq!(
        s.conversations.get_message(&t, &c.id, &m.id).await.unwrap(),
        None
    );
    assert!(matches!(
        s.conversations
            .list_messages(&t, &c.id, &MessageQuery::latest(5))
            .await,
        Err(StoreError::NotFound)
    ));
}
