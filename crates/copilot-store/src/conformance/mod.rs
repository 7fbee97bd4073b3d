//! One conformance suite for every backend and decorator (DESIGN.md 4.2), in the manner of
//! object_store's `integration.rs`: each check is an async function taking a fresh [`StoreSet`];
//! [`conformance_suite!`](crate::conformance_suite) turns all of them into `#[tokio::test]`s for
//! one backend. A new backend is done when it passes this suite unchanged.
//!
//! Checks assume an empty store (the global config level is shared by the whole database) and
//! use fresh tenant ids, so a backend may still share one database between test binaries.

mod changes;
mod config;
mod conversations;
mod membership;
mod messages;
mod ordering;
mod policy;

pub use changes::*;
pub use config::*;
pub use conversations::*;
pub use membership::*;
pub use messages::*;
pub use ordering::*;
pub use policy::*;

use copilot_domain::conversation::{Conversation, NewConversation, ShareAudience, TenantAccess};
use copilot_domain::{TenantId, UserId};

use crate::StoreSet;

/// Expands to one `#[tokio::test]` per conformance check. `$make` is an expression that, when
/// called, returns a future of a fresh `StoreSet` (with `optional`, of an `Option<StoreSet>`:
/// `None` skips the check, for backends whose server is not configured).
#[macro_export]
macro_rules! conformance_suite {
    (optional $make:expr) => {
        $crate::conformance_suite!(@each $make;
            policy_get_missing_is_none,
            policy_put_get_round_trip,
            policy_version_increases_on_every_write,
            policy_stale_expected_version_conflicts,
            policy_delete_and_recreate_gets_a_higher_version,
            regression_07_egress_enum_report_only_is_stored_as_audit,
            route_resolution_over_a_stored_policy,
            config_levels_round_trip,
            config_merge_patch_sets_clears_and_creates,
            config_expected_versions_and_delete,
            config_concurrent_merges_all_land,
            config_effective_with_all_some_and_no_levels,
            regression_04_config_inheritance,
            conversation_create_get_update_delete,
            conversations_are_isolated_by_tenant,
            regression_08_pagination_walks_every_conversation_once,
            list_pages_stay_full_under_the_access_rule,
            list_rejects_an_invalid_cursor,
            list_limit_is_validated_not_clamped,
            list_walk_while_a_conversation_moves,
            access_list_matches_the_read_rule,
            regression_09_concurrent_appends_get_gapless_seq,
            regression_09_failed_writes_leave_nothing_behind,
            messages_newest_and_paging,
            messages_soft_delete_is_idempotent_and_hidden,
            archived_conversation_refuses_appends_and_deletes,
            message_counters_and_activity_order,
            delete_conversation_removes_its_messages,
            membership_put_get_list_delete_and_suspend,
            change_log_records_committed_writes,
            concurrent_first_writers_store_the_highest_version,
            racing_if_match_writers_exactly_one_wins,
            appends_racing_archive_and_delete_are_all_or_nothing,
        );
    };
    (@each $make:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let stores: Option<$crate::StoreSet> = ($make)().await;
                let Some(stores) = stores else { return };
                $crate::conformance::$name(&stores).await;
            }
        )+
    };
    ($make:expr) => {
        $crate::conformance_suite!(optional || async { Some(($make)().await) });
    };
}

/// A tenant id no other check uses.
pub fn fresh_tenant() -> TenantId {
    TenantId::parse(&format!("t-{}", uuid::Uuid::now_v7().simple())).expect("valid id")
}

pub fn user(name: &str) -> UserId {
    UserId::parse(name).expect("valid id")
}

pub fn new_conversation(
    tenant: &TenantId,
    owner: Option<&str>,
    audience: ShareAudience,
    access: TenantAccess,
) -> NewConversation {
    NewConversation {
        tenant_id: tenant.clone(),
        user_id: owner.map(user),
        title: Some("a title".into()),
        persona_id: None,
        jurisdictions: vec![],
        share_audience: audience,
        tenant_access: access,
    }
}

pub async fn create(s: &StoreSet, tenant: &TenantId, owner: Option<&str>) -> Conversation {
    s.conversations
        .create_conversation(&new_conversation(
            tenant,
            owner,
            ShareAudience::Private,
            TenantAccess::View,
        ))
        .await
        .expect("create conversation")
}

/// A service the test script provides, by its variable. A test that needs it and does not get
/// it fails, naming it: it never passes without having run (`./scripts/test.sh` starts
/// PostgreSQL, PgBouncer and Redis and sets every variable).
pub fn test_service(var: &str) -> String {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{var} is not set: this test needs a real service; run ./scripts/test.sh, which starts PostgreSQL, PgBouncer and Redis and sets it"
        ),
    }
}

/// A fresh PostgreSQL database for one test, created from the migrated template
/// `copilot_template` that `scripts/test.sh` prepares; its URL. Fails, naming the variable,
/// when `COPILOT_TEST_POSTGRES_URL` is unset.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = test_service("COPILOT_TEST_POSTGRES_URL");
    let name = format!("copilot_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(&format!(
        "CREATE DATABASE \"{name}\" TEMPLATE copilot_template"
    ))
    .execute(&mut conn)
    .await
    .expect("create a test database from copilot_template");
    let _ = conn.close().await;
    with_database(&admin, &name)
}

/// `url` with its database replaced by `name`, keeping its parameters (`?sslmode=...`).
pub fn with_database(url: &str, name: &str) -> String {
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    let (base, _) = path.rsplit_once('/').expect("URL with a database");
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}
