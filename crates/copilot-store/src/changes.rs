//! The change log: which row a committed write changed, and to which version. Backends record
//! it (when asked to) in the write's own transaction; a cache drains it to re-send invalidations
//! that a crash may have lost. The store does not know what a cache does with it.

use async_trait::async_trait;
use copilot_domain::config::ConfigLevel;
use copilot_domain::{ConversationId, TenantId, Timestamp, UserId};

use crate::{StoreError, StoreResult};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChangeSubject {
    Policy(TenantId),
    Config(ConfigLevel),
    Conversation(TenantId, ConversationId),
    Membership(TenantId, UserId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub id: i64,
    pub subject: ChangeSubject,
    pub version: u64,
    pub at: Timestamp,
}

#[async_trait]
pub trait ChangeLog: Send + Sync {
    /// Recorded changes older than `before`, oldest first.
    async fn changes_before(&self, before: Timestamp, limit: u32) -> StoreResult<Vec<Change>>;

    /// Forgets changes that have been dealt with.
    async fn forget_changes(&self, ids: &[i64]) -> StoreResult<()>;
}

impl ChangeSubject {
    /// `(kind, tenant_id, subject)` columns.
    pub(crate) fn columns(&self) -> (&'static str, Option<String>, Option<String>) {
        match self {
            Self::Policy(t) => ("policy", Some(t.to_string()), None),
            Self::Config(ConfigLevel::Global) => ("config", None, None),
            Self::Config(ConfigLevel::Tenant(t)) => ("config", Some(t.to_string()), None),
            Self::Config(ConfigLevel::User(t, u)) => {
                ("config", Some(t.to_string()), Some(u.to_string()))
            }
            Self::Conversation(t, id) => {
                ("conversation", Some(t.to_string()), Some(id.to_string()))
            }
            Self::Membership(t, u) => ("membership", Some(t.to_string()), Some(u.to_string())),
        }
    }

    pub(crate) fn from_columns(
        kind: &str,
        tenant: Option<&str>,
        subject: Option<&str>,
    ) -> StoreResult<Self> {
        let bad = || StoreError::corrupt("change", format!("{kind} {tenant:?} {subject:?}"));
        let tenant_id = || tenant.map(TenantId::parse).transpose().map_err(|_| bad());
        Ok(match (kind, tenant_id()?, subject) {
            ("policy", Some(t), None) => Self::Policy(t),
            ("config", None, None) => Self::Config(ConfigLevel::Global),
            ("config", Some(t), None) => Self::Config(ConfigLevel::Tenant(t)),
            ("config", Some(t), Some(u)) => {
                Self::Config(ConfigLevel::User(t, UserId::parse(u).map_err(|_| bad())?))
            }
            ("conversation", Some(t), Some(id)) => {
                Self::Conversation(t, ConversationId::parse(id).map_err(|_| bad())?)
            }
            ("membership", Some(t), Some(u)) => {
                Self::Membership(t, UserId::parse(u).map_err(|_| bad())?)
            }
            _ => return Err(bad()),
        })
    }
}
