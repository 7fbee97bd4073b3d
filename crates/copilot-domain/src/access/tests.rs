//! The access table of DESIGN.md 3.6, cell by cell.

use chrono::Utc;
use serde_json::Map;

use super::*;
use crate::conversation::{Conversation, Message, MessageRole, ShareAudience, TenantAccess};
use crate::id::{ConversationId, MessageId};

fn t(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn u(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// The actors of the table. The colleague is the author of the message under test.
fn actor(name: &str) -> Principal {
    match name {
        "owner" => Principal::user(&t("acme"), &u("owner"), TenantRole::Member),
        "colleague" => Principal::user(&t("acme"), &u("colleague"), TenantRole::Member),
        "admin" => Principal::user(&t("acme"), &u("admin"), TenantRole::Admin),
        // Another tenant's admin, whose user id equals the owner's: ids are per tenant.
        "stranger" => Principal::user(&t("other"), &u("owner"), TenantRole::Admin),
        "service" => Principal::service("svc"),
        _ => unreachable!(),
    }
}

fn conversation(kind: &str) -> Conversation {
    let (owner, audience, access) = match kind {
        "private" => (Some(u("owner")), ShareAudience::Private, TenantAccess::View),
        "tenant-view" => (Some(u("owner")), ShareAudience::Tenant, TenantAccess::View),
        "tenant-edit" => (Some(u("owner")), ShareAudience::Tenant, TenantAccess::Edit),
        "public" => (Some(u("owner")), ShareAudience::Public, TenantAccess::View),
        "system" => (None, ShareAudience::Private, TenantAccess::View),
        _ => unreachable!(),
    };
    let now = Utc::now();
    Conversation {
        id: ConversationId::new_v7(now),
        tenant_id: t("acme"),
        user_id: owner,
        title: None,
        persona_id: None,
        jurisdictions: vec![],
        share_audience: audience,
        tenant_access: access,
        archived_at: None,
        created_at: now,
        updated_at: now,
        last_message_at: None,
        message_count: 1,
        version: 1,
    }
}

fn message_by_colleague(c: &Conversation) -> Message {
    Message {
        id: MessageId::new_v7(Utc::now()),
        conversation_id: c.id,
        seq: 1,
        role: MessageRole::User,
        content: Some("hi".into()),
        metadata: Map::new(),
        author_id: Some(u("colleague")),
        created_at: Utc::now(),
        deleted_at: None,
        deleted_by: None,
    }
}

fn outcome(d: Result<(), Denial>) -> &'static str {
    match d {
        Ok(()) => "ok",
        Err(Denial::NotFound) => "404",
        Err(Denial::Forbidden) => "403",
        Err(Denial::Archived) => "409",
    }
}

fn decide(action: &str, who: &Principal, c: &Conversation) -> &'static str {
    outcome(match action {
        "read" => authorize_read(who, c),
        "append-user" => authorize_append(who, c, MessageRole::User),
        "append-assistant" => authorize_append(who, c, MessageRole::Assistant),
        "append-system" => authorize_append(who, c, MessageRole::System),
        "delete-message" => authorize_delete_message(who, c, &message_by_colleague(c)),
        "manage" => authorize_manage(who, c),
        _ => unreachable!(),
    })
}

const ACTORS: [&str; 5] = ["owner", "colleague", "admin", "stranger", "service"];

/// Rows: action, conversation kind, then the outcome for owner, colleague, admin, stranger, service.
const TABLE: &[(&str, &str, [&str; 5])] = &[
    ("read", "private", ["ok", "404", "404", "404", "ok"]),
    ("read", "tenant-view", ["ok", "ok", "ok", "404", "ok"]),
    ("read", "tenant-edit", ["ok", "ok", "ok", "404", "ok"]),
    ("read", "public", ["ok", "ok", "ok", "ok", "ok"]),
    ("read", "system", ["ok", "ok", "ok", "404", "ok"]),
    ("append-user", "private", ["ok", "404", "404", "404", "ok"]),
    (
        "append-user",
        "tenant-view",
        ["ok", "403", "403", "404", "ok"],
    ),
    (
        "append-user",
        "tenant-edit",
        ["ok", "ok", "ok", "404", "ok"],
    ),
    ("append-user", "public", ["ok", "403", "403", "403", "ok"]),
    ("append-user", "system", ["ok", "ok", "ok", "404", "ok"]),
    (
        "append-assistant",
        "private",
        ["403", "404", "404", "404", "ok"],
    ),
    (
        "append-assistant",
        "tenant-view",
        ["403", "403", "403", "404", "ok"],
    ),
    (
        "append-assistant",
        "tenant-edit",
        ["403", "403", "403", "404", "ok"],
    ),
    (
        "append-assistant",
        "public",
        ["403", "403", "403", "403", "ok"],
    ),
    (
        "append-assistant",
        "system",
        ["403", "403", "403", "404", "ok"],
    ),
    (
        "append-system",
        "private",
        ["403", "404", "404", "404", "ok"],
    ),
    (
        "append-system",
        "tenant-edit",
        ["403", "403", "403", "404", "ok"],
    ),
    (
        "append-system",
        "system",
        ["403", "403", "403", "404", "ok"],
    ),
    (
        "delete-message",
        "private",
        ["ok", "404", "404", "404", "ok"],
    ),
    (
        "delete-message",
        "tenant-view",
        ["ok", "ok", "403", "404", "ok"],
    ),
    (
        "delete-message",
        "tenant-edit",
        ["ok", "ok", "ok", "404", "ok"],
    ),
    ("delete-message", "public", ["ok", "ok", "403", "403", "ok"]),
    ("delete-message", "system", ["ok", "ok", "ok", "404", "ok"]),
    ("manage", "private", ["ok", "404", "404", "404", "ok"]),
    ("manage", "tenant-view", ["ok", "403", "ok", "404", "ok"]),
    ("manage", "tenant-edit", ["ok", "403", "ok", "404", "ok"]),
    ("manage", "public", ["ok", "403", "ok", "403", "ok"]),
    ("manage", "system", ["403", "403", "ok", "404", "ok"]),
];

#[test]
fn access_table_every_cell() {
    let mut failures = Vec::new();
    for (action, kind, expected) in TABLE {
        let c = conversation(kind);
        for (who, want) in ACTORS.iter().zip(expected) {
            let got = decide(action, &actor(who), &c);
            if got != *want {
                failures.push(format!("{action} {kind} by {who}: want {want}, got {got}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn archived_conversation_refuses_appends_and_deletes_but_not_manage() {
    let mut c = conversation("tenant-edit");
    c.archived_at = Some(Utc::now());
    assert_eq!(decide("append-user", &actor("owner"), &c), "409");
    assert_eq!(decide("append-assistant", &actor("service"), &c), "409");
    assert_eq!(decide("delete-message", &actor("colleague"), &c), "409");
    assert_eq!(decide("manage", &actor("owner"), &c), "ok");
    assert_eq!(decide("read", &actor("colleague"), &c), "ok");
    // Access is decided before archive state: a forbidden principal still gets 403/404.
    assert_eq!(decide("append-assistant", &actor("owner"), &c), "403");
    assert_eq!(decide("append-user", &actor("stranger"), &c), "404");
}

#[test]
fn create_owner_rules() {
    use crate::conversation::CreateConversationRequest;
    let req = |user_id: Option<Option<UserId>>| CreateConversationRequest {
        user_id,
        title: None,
        persona_id: None,
        jurisdictions: vec![],
        share_audience: ShareAudience::Private,
        tenant_access: TenantAccess::View,
    };
    let acme = t("acme");
    assert_eq!(
        authorize_create(&actor("owner"), &acme, &req(None)),
        Ok(Some(u("owner")))
    );
    assert_eq!(
        authorize_create(&actor("owner"), &acme, &req(Some(Some(u("owner"))))),
        Ok(Some(u("owner")))
    );
    assert_eq!(
        authorize_create(&actor("owner"), &acme, &req(Some(Some(u("colleague"))))),
        Err(Denial::Forbidden)
    );
    assert_eq!(
        authorize_create(&actor("admin"), &acme, &req(Some(Some(u("colleague"))))),
        Err(Denial::Forbidden)
    );
    assert_eq!(
        authorize_create(&actor("owner"), &acme, &req(Some(None))),
        Err(Denial::Forbidden)
    );
    assert_eq!(
        authorize_create(&actor("stranger"), &acme, &req(None)),
        Err(Denial::NotFound)
    );
    assert_eq!(
        authorize_create(&actor("service"), &acme, &req(None)),
        Ok(None)
    );
    assert_eq!(
        authorize_create(&actor("service"), &acme, &req(Some(Some(u("x"))))),
        Ok(Some(u("x")))
    );
}

#[test]
fn config_and_policy_rules() {
    use crate::config::ConfigLevel;
    let acme = t("acme");
    let own = ConfigLevel::User(acme.clone(), u("owner"));
    let colleagues = ConfigLevel::User(acme.clone(), u("colleague"));
    let tenant_level = ConfigLevel::Tenant(acme.clone());
    let cases: &[(&ConfigLevel, &str, &str, &str)] = &[
        // level, actor, read, write
        (&ConfigLevel::Global, "owner", "ok", "403"),
        (&ConfigLevel::Global, "admin", "ok", "403"),
        (&ConfigLevel::Global, "stranger", "ok", "403"),
        (&ConfigLevel::Global, "service", "ok", "ok"),
        (&tenant_level, "owner", "ok", "403"),
        (&tenant_level, "admin", "ok", "ok"),
        (&tenant_level, "stranger", "404", "404"),
        (&tenant_level, "service", "ok", "ok"),
        (&own, "owner", "ok", "ok"),
        (&colleagues, "owner", "403", "403"),
        (&colleagues, "admin", "ok", "ok"),
        (&colleagues, "stranger", "404", "404"),
        (&colleagues, "service", "ok", "ok"),
    ];
    for (level, who, read, write) in cases {
        let p = actor(who);
        assert_eq!(
            outcome(authorize_config_read(&p, level)),
            *read,
            "read {level:?} by {who}"
        );
        assert_eq!(
            outcome(authorize_config_write(&p, level)),
            *write,
            "write {level:?} by {who}"
        );
    }
    assert_eq!(
        outcome(authorize_tenant_admin(&actor("owner"), &acme)),
        "403"
    );
    assert_eq!(
        outcome(authorize_tenant_admin(&actor("admin"), &acme)),
        "ok"
    );
    assert_eq!(
        outcome(authorize_tenant_admin(&actor("stranger"), &acme)),
        "404"
    );
    assert_eq!(outcome(authorize_tenant(&actor("owner"), &acme)), "ok");
}

#[test]
fn list_viewer_matches_can_read_inside_the_tenant() {
    for kind in ["private", "tenant-view", "tenant-edit", "public", "system"] {
        let c = conversation(kind);
        for who in ["owner", "colleague", "admin", "service"] {
            let p = actor(who);
            let viewer = list_viewer(&p, &t("acme")).unwrap();
            assert_eq!(viewer.can_see(&c), can_read(&p, &c), "{kind} {who}");
        }
    }
    assert_eq!(
        list_viewer(&actor("stranger"), &t("acme")),
        Err(Denial::NotFound)
    );
}
