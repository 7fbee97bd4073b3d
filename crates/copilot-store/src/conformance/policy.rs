use copilot_domain::egress::EgressMode;
use copilot_domain::policy::TenantLlmPolicy;
use copilot_domain::route::{RouteError, RouteRequest, RouteSource, RouterDefaults, resolve_route};
use copilot_domain::{Principal, TenantId, TenantRole};
use serde_json::json;

use super::{fresh_tenant, user};
use crate::{StoreError, StoreSet};

fn policy(tenant: &TenantId, doc: serde_json::Value) -> TenantLlmPolicy {
    TenantLlmPolicy::from_json(&doc, tenant).expect("valid policy")
}

fn full_doc() -> serde_json::Value {
    json!({
        "defaultModel": "gpt-tenant", "defaultProvider": "openai", "allowRemoteEgress": true,
        "tasks": [
            {"task": "summarize", "model": "claude", "provider": "anthropic", "temperature": 0.25, "maxTokens": 800},
            {"task": "classify", "model": "llama", "provider": "local"}
        ],
        "egressMode": "audit", "allowOffMode": false,
        "userPolicies": {"alice": {"egressMode": "off", "allowOffMode": true}, "bob": {"egressMode": "enforce"}}
    })
}

pub async fn policy_get_missing_is_none(s: &StoreSet) {
    assert!(
        s.policies
            .get_policy(&fresh_tenant())
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn policy_put_get_round_trip(s: &StoreSet) {
    let t = fresh_tenant();
    let p = policy(&t, full_doc());
    let stored = s.policies.put_policy(&p, None, "admin-1").await.unwrap();
    assert_eq!(stored.policy, p);
    assert_eq!(stored.updated_by, "admin-1");
    let read = s.policies.get_policy(&t).await.unwrap().expect("stored");
    assert_eq!(
        *read, stored,
        "a read returns exactly what the write returned"
    );
    let json = serde_json::to_value(&read).unwrap();
    assert_eq!(json["tenantId"], t.as_str());
    assert_eq!(json["userPolicies"]["alice"]["egressMode"], "off");
    assert_eq!(json["version"], stored.version);
}

pub async fn policy_version_increases_on_every_write(s: &StoreSet) {
    let t = fresh_tenant();
    let p = policy(&t, full_doc());
    let mut last = 0;
    for _ in 0..5 {
        let v = s.policies.put_policy(&p, None, "a").await.unwrap().version;
        assert!(v > last, "version {v} after {last}");
        last = v;
    }
    // Writes to other rows use the same source: versions never repeat across rows.
    let other = fresh_tenant();
    let v = s
        .policies
        .put_policy(&policy(&other, full_doc()), None, "a")
        .await
        .unwrap()
        .version;
    assert!(v > last);
}

pub async fn policy_stale_expected_version_conflicts(s: &StoreSet) {
    let t = fresh_tenant();
    let p = policy(&t, full_doc());
    let err = s.policies.put_policy(&p, Some(1), "a").await.unwrap_err();
    assert!(
        matches!(err, StoreError::VersionConflict { current: None }),
        "{err:?}"
    );
    let v1 = s.policies.put_policy(&p, None, "a").await.unwrap().version;
    let v2 = s
        .policies
        .put_policy(&p, Some(v1), "a")
        .await
        .unwrap()
        .version;
    let err = s.policies.put_policy(&p, Some(v1), "a").await.unwrap_err();
    assert!(
        matches!(err, StoreError::VersionConflict { current: Some(c) } if c == v2),
        "{err:?}"
    );
    let err = s.policies.delete_policy(&t, Some(v1)).await.unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }));
    assert_eq!(
        s.policies.get_policy(&t).await.unwrap().unwrap().version,
        v2,
        "nothing changed"
    );
}

pub async fn policy_delete_and_recreate_gets_a_higher_version(s: &StoreSet) {
    let t = fresh_tenant();
    let p = policy(&t, full_doc());
    let v1 = s.policies.put_policy(&p, None, "a").await.unwrap().version;
    let deleted = s.policies.delete_policy(&t, Some(v1)).await.unwrap();
    assert!(deleted > v1, "a delete takes a fresh version");
    assert!(s.policies.get_policy(&t).await.unwrap().is_none());
    assert!(matches!(
        s.policies.delete_policy(&t, None).await,
        Err(StoreError::NotFound)
    ));
    let v2 = s.policies.put_policy(&p, None, "a").await.unwrap().version;
    assert!(v2 > deleted, "re-create after delete: {v2} > {deleted}");
}

pub async fn regression_07_egress_enum_report_only_is_stored_as_audit(s: &StoreSet) {
    let t = fresh_tenant();
    let mut doc = full_doc();
    doc["egressMode"] = json!("report-only");
    doc["userPolicies"]["bob"]["egressMode"] = json!("report-only");
    s.policies
        .put_policy(&policy(&t, doc), None, "a")
        .await
        .unwrap();
    let read = s.policies.get_policy(&t).await.unwrap().unwrap();
    assert_eq!(read.policy.egress_mode, Some(EgressMode::Audit));
    let json = serde_json::to_value(&read).unwrap();
    assert_eq!(json["egressMode"], "audit");
    assert_eq!(json["userPolicies"]["bob"]["egressMode"], "audit");
}

/// The rules of DESIGN.md 3.3 over a policy that went through the store.
pub async fn route_resolution_over_a_stored_policy(s: &StoreSet) {
    let t = fresh_tenant();
    let defaults = RouterDefaults::default();
    let member = |u: &str| Principal::user(&t, &user(u), TenantRole::Member);
    let service = Principal::service("svc");
    let req = |task: Option<&str>| RouteRequest {
        task: task.map(Into::into),
        ..Default::default()
    };

    // No policy: router defaults, base egress.
    let r = resolve_route(
        None,
        &defaults,
        &req(Some("summarize")),
        &member("carol"),
        &t,
    )
    .unwrap();
    assert_eq!(r.source, RouteSource::RouterDefault);

    s.policies
        .put_policy(&policy(&t, full_doc()), None, "a")
        .await
        .unwrap();
    let stored = s.policies.get_policy(&t).await.unwrap();
    let p = stored.as_deref();
    let r = resolve_route(p, &defaults, &req(Some("summarize")), &member("carol"), &t).unwrap();
    assert_eq!(
        (
            r.provider.as_str(),
            r.model.as_str(),
            r.temperature,
            r.max_tokens
        ),
        ("anthropic", "claude", Some(0.25), Some(800))
    );
    assert_eq!(r.policy_version, p.map(|p| p.version));
    assert_eq!(
        (r.egress.requested, r.egress.effective),
        (EgressMode::Audit, EgressMode::Audit)
    );
    // alice may turn egress off; bob's user mode tightens.
    let r = resolve_route(p, &defaults, &req(None), &member("alice"), &t).unwrap();
    assert_eq!(
        (r.egress.effective, r.egress.off_allowed),
        (EgressMode::Off, true)
    );
    let r = resolve_route(p, &defaults, &req(None), &member("bob"), &t).unwrap();
    assert_eq!(r.egress.effective, EgressMode::Enforce);
    // A member's loosening override is refused; a service's accepted.
    let loosen = RouteRequest {
        egress_mode_override: Some(EgressMode::Audit),
        user_id: Some(user("bob")),
        ..Default::default()
    };
    let r = resolve_route(p, &defaults, &loosen, &member("bob"), &t).unwrap();
    assert_eq!(r.egress.effective, EgressMode::Enforce);
    let r = resolve_route(p, &defaults, &loosen, &service, &t).unwrap();
    assert_eq!(r.egress.effective, EgressMode::Audit);
    // A refused off (carol has no allowOffMode and the tenant's is false).
    let off = RouteRequest {
        egress_mode_override: Some(EgressMode::Off),
        ..Default::default()
    };
    let r = resolve_route(p, &defaults, &off, &member("carol"), &t).unwrap();
    assert_eq!(
        (r.egress.requested, r.egress.effective),
        (EgressMode::Off, EgressMode::Audit)
    );

    // Local-only: a remote task with a remote default has no route.
    let mut doc = full_doc();
    doc["allowRemoteEgress"] = json!(false);
    s.policies
        .put_policy(&policy(&t, doc), None, "a")
        .await
        .unwrap();
    let stored = s.policies.get_policy(&t).await.unwrap();
    let err = resolve_route(
        stored.as_deref(),
        &defaults,
        &req(Some("summarize")),
        &member("carol"),
        &t,
    )
    .unwrap_err();
    assert_eq!(
        err,
        RouteError::NoLocalRoute {
            task: Some("summarize".into())
        }
    );
    let r = resolve_route(
        stored.as_deref(),
        &defaults,
        &req(Some("classify")),
        &member("carol"),
        &t,
    )
    .unwrap();
    assert_eq!((r.provider.as_str(), r.model.as_str()), ("local", "llama"));
}
