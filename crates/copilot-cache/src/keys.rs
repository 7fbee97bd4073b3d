//! Key names (DESIGN.md 5.1), in one place for the decorators and the change-log drainer.

use copilot_domain::config::ConfigLevel;
use copilot_domain::{ConversationId, TenantId, UserId};
use copilot_store::ChangeSubject;

/// `{prefix}:v1:{<tenant>}:<rest>`: the tenant is a Redis Cluster hash tag.
pub fn tenant_key(prefix: &str, tenant: &str, rest: &str) -> String {
    format!("{prefix}:v1:{{{tenant}}}:{rest}")
}

pub fn global_key(prefix: &str, rest: &str) -> String {
    format!("{prefix}:v1:global:{rest}")
}

pub fn policy(prefix: &str, tenant: &TenantId) -> String {
    tenant_key(prefix, tenant.as_str(), "policy")
}

pub fn config(prefix: &str, level: &ConfigLevel) -> String {
    match level {
        ConfigLevel::Global => global_key(prefix, "config"),
        ConfigLevel::Tenant(t) => tenant_key(prefix, t.as_str(), "config"),
        ConfigLevel::User(t, u) => tenant_key(prefix, t.as_str(), &format!("config:{u}")),
    }
}

pub fn conversation(prefix: &str, tenant: &TenantId, id: &ConversationId) -> String {
    tenant_key(prefix, tenant.as_str(), &format!("conv:{id}"))
}

pub fn membership(prefix: &str, tenant: &TenantId, user: &UserId) -> String {
    tenant_key(prefix, tenant.as_str(), &format!("member:{user}"))
}

/// The cache (by name) and key a recorded change invalidates.
pub fn for_change(prefix: &str, subject: &ChangeSubject) -> (&'static str, String) {
    match subject {
        ChangeSubject::Policy(t) => ("policy", policy(prefix, t)),
        ChangeSubject::Config(level) => ("config", config(prefix, level)),
        ChangeSubject::Conversation(t, id) => ("conversation", conversation(prefix, t, id)),
        ChangeSubject::Membership(t, u) => ("auth", membership(prefix, t, u)),
    }
}
