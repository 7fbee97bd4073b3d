//! Key names (DESIGN.md 5.1), in one place for the decorators and the change-log drainer.

use copilot_domain::config::ConfigLevel;
use copilot_domain::{ConversationId, TenantId, UserId};
use copilot_store::ChangeSubject;

/// `{prefix}:v1:{<tenant>}:<rest>`: the tenant is a Redis Cluster hash tag.
pub fn tenant_key(prefix: &str, tenant: &str, rest: &str) -> String {
    Key::tenant(prefix, tenant, &[rest]).as_str().to_owned()
}

/// Keys up to this long are built on the stack.
const INLINE: usize = 192;

/// A key built without allocating (when it fits `INLINE` bytes): a read builds one per lookup,
/// and an L1 hit should cost no allocation.
pub struct Key {
    inline: [u8; INLINE],
    len: usize,
    spilled: Option<String>,
}

impl Key {
    /// `{prefix}:v1:{<tenant>}:` followed by `rest`, concatenated.
    pub fn tenant(prefix: &str, tenant: &str, rest: &[&str]) -> Self {
        let mut key = Self {
            inline: [0; INLINE],
            len: 0,
            spilled: None,
        };
        for part in [prefix, ":v1:{", tenant, "}:"].iter().chain(rest) {
            key.push(part);
        }
        key
    }

    fn push(&mut self, part: &str) {
        if let Some(spilled) = &mut self.spilled {
            spilled.push_str(part);
        } else if let Some(room) = self.inline.get_mut(self.len..self.len + part.len()) {
            room.copy_from_slice(part.as_bytes());
            self.len += part.len();
        } else {
            let mut spilled = self.as_str().to_owned();
            spilled.push_str(part);
            self.spilled = Some(spilled);
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.spilled {
            Some(s) => s,
            // Whole `str`s copied end to end: always UTF-8.
            None => std::str::from_utf8(&self.inline[..self.len]).unwrap_or_default(),
        }
    }
}

impl std::ops::Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

pub fn global_key(prefix: &str, rest: &str) -> String {
    format!("{prefix}:v1:global:{rest}")
}

pub fn policy(prefix: &str, tenant: &TenantId) -> Key {
    Key::tenant(prefix, tenant.as_str(), &["policy"])
}

pub fn config(prefix: &str, level: &ConfigLevel) -> String {
    match level {
        ConfigLevel::Global => global_key(prefix, "config"),
        ConfigLevel::Tenant(t) => tenant_config(prefix, t).as_str().to_owned(),
        ConfigLevel::User(t, u) => user_config(prefix, t, u).as_str().to_owned(),
    }
}

pub fn tenant_config(prefix: &str, tenant: &TenantId) -> Key {
    Key::tenant(prefix, tenant.as_str(), &["config"])
}

pub fn user_config(prefix: &str, tenant: &TenantId, user: &UserId) -> Key {
    Key::tenant(prefix, tenant.as_str(), &["config:", user.as_str()])
}

pub fn conversation(prefix: &str, tenant: &TenantId, id: &ConversationId) -> String {
    tenant_key(prefix, tenant.as_str(), &format!("conv:{id}"))
}

pub fn membership(prefix: &str, tenant: &TenantId, user: &UserId) -> Key {
    Key::tenant(prefix, tenant.as_str(), &["member:", user.as_str()])
}

/// The cache (by name) and key a recorded change invalidates.
pub fn for_change(prefix: &str, subject: &ChangeSubject) -> (&'static str, String) {
    match subject {
        ChangeSubject::Policy(t) => ("policy", policy(prefix, t).as_str().to_owned()),
        ChangeSubject::Config(level) => ("config", config(prefix, level)),
        ChangeSubject::Conversation(t, id) => ("conversation", conversation(prefix, t, id)),
        ChangeSubject::Membership(t, u) => ("auth", membership(prefix, t, u).as_str().to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_same_inline_or_spilled() {
        let short = Key::tenant("copilot", "acme", &["config:", "alice"]);
        assert_eq!(&*short, "copilot:v1:{acme}:config:alice");
        assert!(short.spilled.is_none());
        let long_user = "u".repeat(300);
        let long = Key::tenant("copilot", "acme", &["config:", &long_user]);
        assert_eq!(&*long, format!("copilot:v1:{{acme}}:config:{long_user}"));
        assert_eq!(tenant_key("p", "t", "policy"), "p:v1:{t}:policy");
    }
}
