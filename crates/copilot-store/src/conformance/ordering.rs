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
