//! Versions follow commit order (DESIGN.md 5.2): when many writers race on one key, including
//! its very first write, the version stored is the highest any writer was answered, and the
//! value stored is that writer's. Caches refuse older versions, so a version that went
//! backwards would pin the other writer's value in every cache until its TTL.

use copilot_domain::config::{ConfigLevel, ConfigPatch};
use copilot_domain::membership::MembershipInput;
use copilot_domain::policy::TenantLlmPolicy;
use serde_json::json;

use super::{fresh_tenant, user};
use crate::StoreSet;

const WRITERS: usize = 50;

/// The answers `(version, writer)` of `WRITERS` concurrent writes; panics if any failed.
async fn race<F, Fut>(write: F) -> Vec<(u64, usize)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    let tasks: Vec<_> = (0..WRITERS).map(|i| tokio::spawn(write(i))).collect();
    let mut answers = Vec::with_capacity(WRITERS);
    for (i, task) in tasks.into_iter().enumerate() {
        answers.push((task.await.expect("writer"), i));
    }
    answers
}

fn winner(answers: &[(u64, usize)]) -> (u64, usize) {
    let mut sorted = answers.to_vec();
    sorted.sort_unstable();
    sorted.dedup_by_key(|a| a.0);
    assert_eq!(sorted.len(), answers.len(), "two writers got one version");
    *sorted.last().expect("writers")
}

pub async fn concurrent_first_writers_store_the_highest_version(s: &StoreSet) {
    // Policy.
    let tenant = fresh_tenant();
    let answers = race(|i| {
        let (policies, tenant) = (s.policies.clone(), tenant.clone());
        async move {
            let policy = TenantLlmPolicy::from_json(
                &json!({"defaultModel": format!("m{i}"), "defaultProvider": "openai"}),
                &tenant,
            )
            .expect("policy");
            policies
                .put_policy(&policy, None, "w")
                .await
                .expect("put")
                .version
        }
    })
    .await;
    let (version, i) = winner(&answers);
    let stored = s
        .policies
        .get_policy(&tenant)
        .await
        .unwrap()
        .expect("policy");
    assert_eq!(
        (stored.version, stored.policy.default_model.as_str()),
        (version, format!("m{i}").as_str()),
        "policy"
    );

    // Config level, written with PUT.
    let level = ConfigLevel::Tenant(fresh_tenant());
    let answers = race(|i| {
        let (configs, level) = (s.configs.clone(), level.clone());
        async move {
            let patch = ConfigPatch::from_json(&json!({"mergeMaxMessages": i + 1})).expect("patch");
            configs
                .put_patch(&level, &patch, None, "w")
                .await
                .expect("put")
                .version
        }
    })
    .await;
    let (version, i) = winner(&answers);
    let stored = s.configs.get_patch(&level).await.unwrap().expect("level");
    assert_eq!(stored.version, version, "config version");
    assert_eq!(
        stored.patch.merge_max_messages,
        Some(i as u32 + 1),
        "config value"
    );

    // Membership.
    let tenant = fresh_tenant();
    let answers = race(|i| {
        let (members, tenant) = (s.members.clone(), tenant.clone());
        async move {
            let role = if i % 2 == 0 { "admin" } else { "member" };
            let input = MembershipInput::from_json(&json!({"role": role, "status": "active"}))
                .expect("membership");
            members
                .put_membership(&tenant, &user("u1"), &input)
                .await
                .expect("put")
                .version
        }
    })
    .await;
    let (version, i) = winner(&answers);
    let stored = s
        .members
        .get_membership(&tenant, &user("u1"))
        .await
        .unwrap()
        .expect("membership");
    assert_eq!(stored.version, version, "membership version");
    assert_eq!(
        stored.role.as_str(),
        if i % 2 == 0 { "admin" } else { "member" },
        "membership value"
    );
}

/// Racing conditional writers: of many writers that all send the same expected version, exactly
/// one wins and the others get `VersionConflict`.
pub async fn racing_if_match_writers_exactly_one_wins(s: &StoreSet) {
    use crate::StoreError;
    let tenant = fresh_tenant();
    let make = |model: String| {
        TenantLlmPolicy::from_json(
            &json!({"defaultModel": model, "defaultProvider": "openai"}),
            &tenant,
        )
        .expect("policy")
    };
    let current = s
        .policies
        .put_policy(&make("start".into()), None, "w")
        .await
        .unwrap()
        .version;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (policies, policy) = (s.policies.clone(), make(format!("m{i}")));
            tokio::spawn(async move { policies.put_policy(&policy, Some(current), "w").await })
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        match task.await.expect("writer") {
            Ok(_) => won += 1,
            Err(StoreError::VersionConflict { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1, "exactly one conditional writer wins");
}

/// Appends racing an archive and a delete: each append either landed before (and is counted,
/// with gapless seq) or was refused (`ConversationArchived`, `NotFound`); nothing lands after.
pub async fn appends_racing_archive_and_delete_are_all_or_nothing(s: &StoreSet) {
    use copilot_domain::conversation::{ConversationUpdate, MessageQuery, MessageRole, NewMessage};

    use crate::StoreError;
    let tenant = fresh_tenant();
    for ending in ["archive", "delete"] {
        let conversation = super::create(s, &tenant, Some("owner")).await;
        let id = conversation.id;
        let appends: Vec<_> = (0..30)
            .map(|i| {
                let (store, tenant) = (s.conversations.clone(), tenant.clone());
                tokio::spawn(async move {
                    let message = NewMessage {
                        role: MessageRole::User,
                        content: format!("m{i}"),
                        metadata: serde_json::Map::new(),
                        author_id: Some(user("owner")),
                    };
                    store.append_message(&tenant, &id, &message).await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        match ending {
            "archive" => {
                let update = ConversationUpdate {
                    archived: Some(true),
                    ..ConversationUpdate::default()
                };
                s.conversations
                    .update_conversation(&tenant, &id, &update, None)
                    .await
                    .unwrap();
            }
            _ => {
                s.conversations
                    .delete_conversation(&tenant, &id, None)
                    .await
                    .unwrap();
            }
        }
        let mut landed = Vec::new();
        for task in appends {
            match task.await.expect("append") {
                Ok(write) => landed.push(write.message.seq),
                Err(StoreError::ConversationArchived | StoreError::NotFound) => {}
                Err(e) => panic!("{ending}: unexpected {e}"),
            }
        }
        landed.sort_unstable();
        assert_eq!(
            landed,
            (1..=landed.len() as u64).collect::<Vec<_>>(),
            "{ending}: gapless seq for what landed"
        );
        if ending == "archive" {
            let after = s
                .conversations
                .get_conversation(&tenant, &id)
                .await
                .unwrap()
                .expect("archived, not gone");
            assert_eq!(after.message_count, landed.len() as u64, "archive: counted");
            let page = s
                .conversations
                .list_messages(&tenant, &id, &MessageQuery::latest(500))
                .await
                .unwrap();
            assert_eq!(page.items.len(), landed.len(), "archive: nothing after");
        } else {
            assert!(
                s.conversations
                    .get_conversation(&tenant, &id)
                    .await
                    .unwrap()
                    .is_none(),
                "delete: gone with its messages"
            );
        }
    }
}
