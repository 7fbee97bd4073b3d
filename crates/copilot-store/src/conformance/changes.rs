use copilot_domain::TenantRole;
use copilot_domain::config::{ConfigLevel, ConfigPatch};
use copilot_domain::conversation::{MessageRole, NewMessage};
use copilot_domain::membership::{MembershipInput, MembershipStatus};
use copilot_domain::policy::TenantLlmPolicy;
use serde_json::json;

use super::{create, fresh_tenant, user};
use crate::{ChangeSubject, StoreSet};

/// Every committed write is in the change log with the version it took; a refused write is not;
/// forgotten changes are gone. (Backends record it when asked to; the suite asks.)
pub async fn change_log_records_committed_writes(s: &StoreSet) {
    let t = fresh_tenant();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let policy =
        TenantLlmPolicy::from_json(&json!({"defaultModel": "m", "defaultProvider": "p"}), &t)
            .unwrap();
    let v1 = s
        .policies
        .put_policy(&policy, None, "a")
        .await
        .unwrap()
        .version;
    assert!(
        s.policies
            .put_policy(&policy, Some(v1 + 100), "a")
            .await
            .is_err(),
        "a refused write"
    );
    let level = ConfigLevel::User(t.clone(), user("u1"));
    let v2 = s
        .configs
        .put_patch(&level, &ConfigPatch::default(), None, "u1")
        .await
        .unwrap()
        .version;
    let c = create(s, &t, Some("owner")).await;
    let message = NewMessage {
        role: MessageRole::User,
        content: "x".into(),
        metadata: Default::default(),
        author_id: None,
    };
    let v4 = s
        .conversations
        .append_message(&t, &c.id, &message)
        .await
        .unwrap()
        .conversation
        .version;
    let input = MembershipInput {
        role: TenantRole::Member,
        status: MembershipStatus::Active,
    };
    let v5 = s
        .members
        .put_membership(&t, &user("u1"), &input)
        .await
        .unwrap()
        .version;
    let v6 = s.policies.delete_policy(&t, None).await.unwrap();

    let changes = s.changes.changes_before(later, 1000).await.unwrap();
    let got: Vec<(ChangeSubject, u64)> = changes
        .iter()
        .map(|c| (c.subject.clone(), c.version))
        .collect();
    assert_eq!(
        got,
        vec![
            (ChangeSubject::Policy(t.clone()), v1),
            (ChangeSubject::Config(level), v2),
            (ChangeSubject::Conversation(t.clone(), c.id), c.version),
            (ChangeSubject::Conversation(t.clone(), c.id), v4),
            (ChangeSubject::Membership(t.clone(), user("u1")), v5),
            (ChangeSubject::Policy(t.clone()), v6),
        ]
    );
    assert!(
        s.changes
            .changes_before(chrono::Utc::now() - chrono::Duration::hours(1), 1000)
            .await
            .unwrap()
            .is_empty()
    );
    let first_two: Vec<i64> = changes.iter().take(2).map(|c| c.id).collect();
    s.changes.forget_changes(&first_two).await.unwrap();
    assert_eq!(
        s.changes.changes_before(later, 1000).await.unwrap().len(),
        4
    );
    assert_eq!(
        s.changes.changes_before(later, 2).await.unwrap().len(),
        2,
        "limit"
    );
}
