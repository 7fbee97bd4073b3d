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

/// A change-log row as both backends read it: `(id, kind, tenant_id, subject, version, at)`.
pub(crate) type ChangeRow<At> = (i64, String, Option<String>, Option<String>, i64, At);

impl Change {
    /// Decodes change-log rows, converting each one's time with `at`.
    pub(crate) fn from_rows<At>(
        rows: Vec<ChangeRow<At>>,
        at: impl Fn(At) -> Timestamp,
    ) -> StoreResult<Vec<Self>> {
        rows.into_iter()
            .map(|(id, kind, tenant, subject, version, created)| {
                Ok(Self {
                    id,
                    subject: ChangeSubject::from_columns(
                        &kind,
                        tenant.as_deref(),
                        subject.as_deref(),
                    )?,
                    version: u64::try_from(version)
                        .map_err(|_| StoreError::corrupt("version", version))?,
                    at: at(created),
                })
            })
            .collect()
    }
}

/// What a change feed delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A write committed: `subject` is now at `version`.
    Changed {
        subject: ChangeSubject,
        version: u64,
    },
    /// A token sent with [`ChangeFeed::heartbeat`] came back.
    Heartbeat(String),
}

/// Changes pushed to every listening process as they commit (PostgreSQL `LISTEN/NOTIFY`, sent
/// once the write has committed): an invalidation path that does not depend on Redis.
#[async_trait]
pub trait ChangeFeed: Send + Sync {
    /// Starts listening: every change that commits after this returns is delivered.
    async fn listen(&self) -> StoreResult<Box<dyn ChangeStream>>;

    /// Sends `token` to every listener, through the same path as the changes and behind those
    /// already queued (a liveness probe: a listener that hears its own token knows the path
    /// works end to end and has delivered every change announced before it).
    async fn heartbeat(&self, token: &str) -> StoreResult<()>;

    /// Announces again a committed change (one whose writer may have died before announcing
    /// it; the change log says which). Listeners treat a repeat as a no-op.
    async fn announce(&self, subject: &ChangeSubject, version: u64) -> StoreResult<()>;
}

/// One listening session.
#[async_trait]
pub trait ChangeStream: Send {
    /// The next notice. An error ends the session: notices may have been lost.
    async fn next(&mut self) -> StoreResult<Notice>;
}

impl Notice {
    /// `c|kind|tenant|subject|version` or `h|token` (ids never contain `|`): what a listener
    /// receives for a change of `subject` to `version`.
    pub(crate) fn encode_change(subject: &ChangeSubject, version: u64) -> String {
        let (kind, tenant, subject) = subject.columns();
        format!(
            "c|{kind}|{}|{}|{version}",
            tenant.unwrap_or_default(),
            subject.unwrap_or_default()
        )
    }

    /// `h|token`: a heartbeat.
    pub(crate) fn encode_heartbeat(token: &str) -> String {
        format!("h|{token}")
    }

    pub(crate) fn decode(payload: &str) -> Option<Self> {
        if let Some(token) = payload.strip_prefix("h|") {
            return Some(Self::Heartbeat(token.to_owned()));
        }
        let mut parts = payload.strip_prefix("c|")?.split('|');
        let (kind, tenant, subject, version) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let subject =
            ChangeSubject::from_columns(kind, some(tenant).as_deref(), some(subject).as_deref())
                .ok()?;
        Some(Self::Changed {
            subject,
            version: version.parse().ok()?,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_survive_their_encoding() {
        let t = TenantId::parse("acme").unwrap();
        let u = UserId::parse("alice@example.com").unwrap();
        let c = ConversationId::parse("01938c6e-7a9f-7cc2-9a4b-1d2e3f405060").unwrap();
        for subject in [
            ChangeSubject::Policy(t.clone()),
            ChangeSubject::Config(ConfigLevel::Global),
            ChangeSubject::Config(ConfigLevel::Tenant(t.clone())),
            ChangeSubject::Config(ConfigLevel::User(t.clone(), u.clone())),
            ChangeSubject::Conversation(t.clone(), c),
            ChangeSubject::Membership(t.clone(), u.clone()),
        ] {
            let payload = Notice::encode_change(&subject, 42);
            assert_eq!(
                Notice::decode(&payload),
                Some(Notice::Changed {
                    subject,
                    version: 42
                })
            );
        }
        assert_eq!(
            Notice::decode(&Notice::encode_heartbeat("123-9")),
            Some(Notice::Heartbeat("123-9".into()))
        );
        assert_eq!(Notice::decode("c|policy||x|1"), None, "no tenant");
        assert_eq!(Notice::decode("c|policy|acme||v"), None, "bad version");
        assert_eq!(Notice::decode("garbage"), None);
    }
}
