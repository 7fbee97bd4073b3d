use chrono::Utc;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::access::TenantRole;
use crate::egress::EgressMode::{Audit, Enforce, Off};

fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn member(u: &str) -> Principal {
    Principal::user(&tenant(), &uid(u), TenantRole::Member)
}

fn admin(u: &str) -> Principal {
    Principal::user(&tenant(), &uid(u), TenantRole::Admin)
}

fn service() -> Principal {
    Principal::service("svc")
}

fn defaults() -> RouterDefaults {
    RouterDefaults {
        provider: "openai".into(),
        model: "gpt-router".into(),
        local_provider: "local".into(),
        base_egress_mode: Enforce,
    }
}

fn policy(doc: serde_json::Value) -> StoredPolicy {
    StoredPolicy {
        policy: TenantLlmPolicy::from_json(&doc, &tenant()).unwrap(),
        version: 12,
        updated_at: Utc::now(),
        updated_by: "admin".into(),
    }
}

fn base_doc() -> serde_json::Value {
    json!({
        "defaultModel": "gpt-tenant", "defaultProvider": "openai",
        "tasks": [
            {"task": "summarize", "model": "claude", "provider": "anthropic", "temperature": 0.2, "maxTokens": 500},
            {"task": "classify", "model": "llama", "provider": "local"}
        ]
    })
}

fn req(task: Option<&str>) -> RouteRequest {
    RouteRequest {
        task: task.map(Into::into),
        ..Default::default()
    }
}

fn route(p: Option<&StoredPolicy>, r: &RouteRequest, who: &Principal) -> Result<Route, RouteError> {
    resolve_route(p, &defaults(), r, who, &tenant())
}

#[test]
fn rule1_no_policy_uses_router_defaults() {
    let r = route(None, &req(Some("summarize")), &member("u1")).unwrap();
    assert_eq!(
        (r.provider.as_str(), r.model.as_str()),
        ("openai", "gpt-router")
    );
    assert_eq!(r.source, RouteSource::RouterDefault);
    assert_eq!(r.policy_version, None);
    assert_eq!(
        r.egress,
        EgressDecision {
            requested: Enforce,
            effective: Enforce,
            off_allowed: false
        }
    );
}

#[test]
fn rules2_and_4_task_then_tenant_default() {
    let p = policy(base_doc());
    let r = route(Some(&p), &req(Some("summarize")), &member("u1")).unwrap();
    assert_eq!(
        (r.provider.as_str(), r.model.as_str(), r.source),
        ("anthropic", "claude", RouteSource::Task)
    );
    assert_eq!(r.policy_version, Some(12));
    let r = route(Some(&p), &req(Some("unknown-task")), &member("u1")).unwrap();
    assert_eq!(
        (r.provider.as_str(), r.model.as_str(), r.source),
        ("openai", "gpt-tenant", RouteSource::TenantDefault)
    );
    let r = route(Some(&p), &req(None), &member("u1")).unwrap();
    assert_eq!(r.source, RouteSource::TenantDefault);
}

#[test]
fn rule3_local_only() {
    let mut doc = base_doc();
    doc["allowRemoteEgress"] = json!(false);
    let p = policy(doc.clone());
    // The task's own provider is local.
    let r = route(Some(&p), &req(Some("classify")), &member("u1")).unwrap();
    assert_eq!(
        (r.provider.as_str(), r.model.as_str(), r.source),
        ("local", "llama", RouteSource::Task)
    );
    // A remote task and a remote default: refused, naming the task, never a remote fallback.
    let err = route(Some(&p), &req(Some("summarize")), &member("u1")).unwrap_err();
    assert_eq!(
        err,
        RouteError::NoLocalRoute {
            task: Some("summarize".into())
        }
    );
    // A remote task but a local tenant default: the default, and the task's settings do not apply.
    doc["defaultProvider"] = json!("local");
    doc["defaultModel"] = json!("qwen");
    let p = policy(doc);
    let r = route(Some(&p), &req(Some("summarize")), &member("u1")).unwrap();
    assert_eq!(
        (r.provider.as_str(), r.model.as_str(), r.source),
        ("local", "qwen", RouteSource::TenantDefault)
    );
    assert_eq!(r.temperature, None);
}

#[test]
fn rule5_task_settings_win_else_callers_pass_through() {
    let p = policy(base_doc());
    let mut r = req(Some("summarize"));
    r.temperature = Some(1.5);
    r.max_tokens = Some(9);
    let out = route(Some(&p), &r, &member("u1")).unwrap();
    assert_eq!((out.temperature, out.max_tokens), (Some(0.2), Some(500)));
    r.task = Some("classify".into());
    let out = route(Some(&p), &r, &member("u1")).unwrap();
    assert_eq!((out.temperature, out.max_tokens), (Some(1.5), Some(9)));
}

#[test]
fn rule6_caller_model_replaces_model_not_provider() {
    let p = policy(base_doc());
    let mut r = req(Some("summarize"));
    r.model = Some("claude-mini".into());
    let out = route(Some(&p), &r, &member("u1")).unwrap();
    assert_eq!(
        (out.provider.as_str(), out.model.as_str()),
        ("anthropic", "claude-mini")
    );
}

fn egress_of(
    doc_extra: serde_json::Value,
    user: Option<&str>,
    call: Option<EgressMode>,
    who: &Principal,
) -> EgressDecision {
    let mut doc = base_doc();
    for (k, v) in doc_extra.as_object().unwrap() {
        doc[k] = v.clone();
    }
    let p = policy(doc);
    let r = RouteRequest {
        user_id: user.map(uid),
        egress_mode_override: call,
        ..Default::default()
    };
    route(Some(&p), &r, who).unwrap().egress
}

#[test]
fn rule7_tenant_mode_applies_and_off_needs_allow() {
    let e = egress_of(json!({"egressMode": "audit"}), None, None, &member("u1"));
    assert_eq!(
        e,
        EgressDecision {
            requested: Audit,
            effective: Audit,
            off_allowed: false
        }
    );
    // A tenant off without allowOffMode is refused: effective stays at the base.
    let e = egress_of(json!({"egressMode": "off"}), None, None, &member("u1"));
    assert_eq!(
        e,
        EgressDecision {
            requested: Off,
            effective: Enforce,
            off_allowed: false
        }
    );
    let e = egress_of(
        json!({"egressMode": "off", "allowOffMode": true}),
        None,
        None,
        &member("u1"),
    );
    assert_eq!(
        e,
        EgressDecision {
            requested: Off,
            effective: Off,
            off_allowed: true
        }
    );
}

#[test]
fn rule7_user_allow_off_overrides_tenant() {
    let extra = json!({"egressMode": "audit", "allowOffMode": false,
                       "userPolicies": {"u1": {"egressMode": "off", "allowOffMode": true}, "u2": {"egressMode": "off"}}});
    let e = egress_of(extra.clone(), None, None, &member("u1"));
    assert_eq!(
        e,
        EgressDecision {
            requested: Off,
            effective: Off,
            off_allowed: true
        }
    );
    let e = egress_of(extra.clone(), None, None, &member("u2"));
    assert_eq!(
        e,
        EgressDecision {
            requested: Off,
            effective: Audit,
            off_allowed: false
        }
    );
    // The tenant allows off, but this user's own flag says no.
    let extra = json!({"egressMode": "off", "allowOffMode": true, "userPolicies": {"u3": {"allowOffMode": false}}});
    let e = egress_of(extra.clone(), None, None, &member("u3"));
    // Rule 8's note: the tenant's off is effective even for u3; u3 just cannot choose off itself.
    assert_eq!(
        e,
        EgressDecision {
            requested: Off,
            effective: Off,
            off_allowed: false
        }
    );
    let e = egress_of(extra, None, Some(Off), &member("u3"));
    assert_eq!(e.effective, Off);
    assert!(!e.off_allowed);
}

#[test]
fn rule7_call_override_user_may_only_tighten_service_may_loosen() {
    let extra = json!({"egressMode": "audit", "allowOffMode": true});
    let e = egress_of(extra.clone(), None, Some(Enforce), &member("u1"));
    assert_eq!(
        e,
        EgressDecision {
            requested: Enforce,
            effective: Enforce,
            off_allowed: true
        }
    );
    // A member's loosening override is refused.
    let e = egress_of(extra.clone(), None, Some(Off), &member("u1"));
    assert_eq!(
        e,
        EgressDecision {
            requested: Off,
            effective: Audit,
            off_allowed: true
        }
    );
    // A service's is accepted (off is allowed here).
    let e = egress_of(extra.clone(), Some("u1"), Some(Off), &service());
    assert_eq!(
        e,
        EgressDecision {
            requested: Off,
            effective: Off,
            off_allowed: true
        }
    );
    // But not off where off is not allowed, even for a service.
    let e = egress_of(
        json!({"egressMode": "audit"}),
        Some("u1"),
        Some(Off),
        &service(),
    );
    assert_eq!(
        e,
        EgressDecision {
            requested: Off,
            effective: Audit,
            off_allowed: false
        }
    );
    let e = egress_of(json!({}), Some("u1"), Some(Audit), &service());
    assert_eq!(e.effective, Audit);
}

#[test]
fn rule8_who_may_resolve_for_whom() {
    let p = policy(base_doc());
    let for_u2 = RouteRequest {
        user_id: Some(uid("u2")),
        ..Default::default()
    };
    assert_eq!(
        route(Some(&p), &for_u2, &member("u1")),
        Err(RouteError::Denied(Denial::Forbidden))
    );
    assert!(route(Some(&p), &for_u2, &member("u2")).is_ok());
    assert!(route(Some(&p), &for_u2, &admin("a")).is_ok());
    assert!(route(Some(&p), &for_u2, &service()).is_ok());
    let stranger = Principal::user(
        &TenantId::parse("other").unwrap(),
        &uid("u1"),
        TenantRole::Admin,
    );
    assert_eq!(
        route(Some(&p), &req(None), &stranger),
        Err(RouteError::Denied(Denial::NotFound))
    );
}

#[test]
fn route_request_validation() {
    let err = RouteRequest::from_json(&json!({"temperature": 5, "maxTokens": 0, "egressModeOverride": "x", "userId": "a b", "zzz": 1}))
        .unwrap_err();
    assert_eq!(err.field_errors().len(), 5);
    let ok = RouteRequest::from_json(&json!({"egressModeOverride": "report-only"})).unwrap();
    assert_eq!(ok.egress_mode_override, Some(Audit));
}

fn arb_mode() -> impl Strategy<Value = EgressMode> {
    prop_oneof![Just(Off), Just(Audit), Just(Enforce)]
}

fn arb_policy() -> impl Strategy<Value = TenantLlmPolicy> {
    (
        proptest::option::of(arb_mode()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(arb_mode()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(tm, toff, um, uoff)| {
            let mut p = TenantLlmPolicy::from_json(&base_doc(), &tenant()).unwrap();
            p.egress_mode = tm;
            p.allow_off_mode = toff;
            p.user_policies.insert(
                uid("u1"),
                crate::policy::UserEgressPolicy {
                    egress_mode: um,
                    allow_off_mode: uoff,
                },
            );
            p
        })
}

proptest! {
    /// A member's call override never loosens the effective mode.
    #[test]
    fn egress_member_override_never_loosens(p in arb_policy(), base in arb_mode(), call in arb_mode()) {
        let who = member("u1");
        let without = resolve_egress(Some(&p), base, Some(&uid("u1")), None, &who);
        let with = resolve_egress(Some(&p), base, Some(&uid("u1")), Some(call), &who);
        prop_assert!(with.effective >= without.effective);
    }

    /// A stricter base mode never yields a looser effective mode.
    #[test]
    fn egress_monotone_in_base(p in arb_policy(), a in arb_mode(), b in arb_mode(), call in proptest::option::of(arb_mode()), svc in any::<bool>()) {
        let who = if svc { service() } else { member("u1") };
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let e_lo = resolve_egress(Some(&p), lo, Some(&uid("u1")), call, &who);
        let e_hi = resolve_egress(Some(&p), hi, Some(&uid("u1")), call, &who);
        prop_assert!(e_lo.effective <= e_hi.effective);
    }

    /// `off` is effective only where the tenant or the user allows it.
    #[test]
    fn egress_off_only_when_allowed(p in arb_policy(), base in arb_mode(), call in proptest::option::of(arb_mode()), svc in any::<bool>()) {
        let who = if svc { service() } else { member("u1") };
        let e = resolve_egress(Some(&p), base, Some(&uid("u1")), call, &who);
        if e.effective == Off && base != Off {
            prop_assert!(e.off_allowed || p.allow_off_mode == Some(true));
        }
    }
}
