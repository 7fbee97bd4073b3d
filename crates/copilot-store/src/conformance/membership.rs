use copilot_domain::TenantRole;
use copilot_domain::membership::{MembershipInput, MembershipStatus};

use super::{fresh_tenant, user};
use crate::{StoreError, StoreSet};

pub async fn membership_put_get_list_delete_and_suspend(s: &StoreSet) {
    let t = fresh_tenant();
    let other = fresh_tenant();
    assert!(
        s.members
            .get_membership(&t, &user("bob"))
            .await
            .unwrap()
            .is_none()
    );
    let active_member = MembershipInput {
        role: TenantRole::Member,
        status: MembershipStatus::Active,
    };
    let bob = s
        .members
        .put_membership(&t, &user("bob"), &active_member)
        .await
        .unwrap();
    assert!(bob.is_active());
    let admin = MembershipInput {
        role: TenantRole::Admin,
        status: MembershipStatus::Active,
    };
    s.members
        .put_membership(&t, &user("alice"), &admin)
        .await
        .unwrap();
    s.members
        .put_membership(&other, &user("bob"), &admin)
        .await
        .unwrap();

    let listed = s.members.list_members(&t).await.unwrap();
    let names: Vec<_> = listed.iter().map(|m| m.user_id.as_str()).collect();
    assert_eq!(
        names,
        ["alice", "bob"],
        "ordered by user id, this tenant only"
    );

    let suspended = MembershipInput {
        role: TenantRole::Member,
        status: MembershipStatus::Suspended,
    };
    let bob2 = s
        .members
        .put_membership(&t, &user("bob"), &suspended)
        .await
        .unwrap();
    assert!(!bob2.is_active());
    assert!(bob2.version > bob.version);
    assert_eq!(
        bob2.created_at, bob.created_at,
        "an update keeps the creation time"
    );
    assert_eq!(
        s.members.get_membership(&t, &user("bob")).await.unwrap(),
        Some(bob2.clone())
    );

    let deleted = s.members.delete_membership(&t, &user("bob")).await.unwrap();
    assert!(deleted > bob2.version);
    assert!(
        s.members
            .get_membership(&t, &user("bob"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(matches!(
        s.members.delete_membership(&t, &user("bob")).await,
        Err(StoreError::NotFound)
    ));
    assert!(
        s.members
            .get_membership(&other, &user("bob"))
            .await
            .unwrap()
            .is_some(),
        "other tenant untouched"
    );
}
