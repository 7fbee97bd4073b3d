//! The memory backend's statements for the shared write flows (`crate::versioned`): policies,
//! config levels and memberships are written by the same code as in SQLite and PostgreSQL.
//!
//! A write holds the store's writer lock from its start to its commit and applies its changes
//! at the commit, all at once under the state lock; a write dropped half-way (a cancelled
//! request) leaves nothing behind but an unused version number.

use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::config::{ConfigLevel, StoredPatch};
use copilot_domain::membership::{Membership, MembershipInput};
use copilot_domain::policy::StoredPolicy;
use copilot_domain::{TenantId, Timestamp, UserId};

use super::{MemoryStore, State};
use crate::StoreResult;
use crate::changes::{Change, ChangeSubject};
use crate::versioned::{ConfigRows, MembershipRows, PolicyRows, RowStatements};

/// A change a write applies to the state when it commits.
type Write = Box<dyn FnOnce(&mut State) + Send>;

/// One write: the writer lock, and what it changes when it commits.
pub(crate) struct MemoryTx {
    _writer: tokio::sync::OwnedMutexGuard<()>,
    writes: Vec<Write>,
}

impl MemoryTx {
    pub(super) fn then(&mut self, write: impl FnOnce(&mut State) + Send + 'static) {
        self.writes.push(Box::new(write));
    }
}

impl State {
    /// The version of the row `subject` names, if there is one.
    fn row_version(&self, subject: &ChangeSubject) -> Option<u64> {
        match subject {
            ChangeSubject::Policy(tenant) => self.policies.get(tenant).map(|p| p.version),
            ChangeSubject::Config(level) => self.configs.get(level).map(|p| p.version),
            ChangeSubject::Membership(tenant, user) => self
                .members
                .get(&(tenant.clone(), user.clone()))
                .map(|m| m.version),
            ChangeSubject::Conversation(tenant, id) => self
                .conversation(tenant, id)
                .map(|row| row.conversation.version),
        }
    }

    fn remove_row(&mut self, subject: &ChangeSubject) {
        match subject {
            ChangeSubject::Policy(tenant) => {
                self.policies.remove(tenant);
            }
            ChangeSubject::Config(level) => {
                self.configs.remove(level);
            }
            ChangeSubject::Membership(tenant, user) => {
                self.members.remove(&(tenant.clone(), user.clone()));
            }
            ChangeSubject::Conversation(_, id) => {
                self.conversations.remove(id);
            }
        }
    }

    pub(super) fn record_change(&mut self, subject: ChangeSubject, version: u64, at: Timestamp) {
        if self.record_changes {
            self.last_change += 1;
            let id = self.last_change;
            self.changes.push(Change {
                id,
                subject,
                version,
                at,
            });
        }
    }
}

#[async_trait]
impl RowStatements for MemoryStore {
    type Tx = MemoryTx;

    async fn begin_for(&self, _: &ChangeSubject) -> StoreResult<MemoryTx> {
        Ok(MemoryTx {
            _writer: Arc::clone(&self.writer).lock_owned().await,
            writes: Vec::new(),
        })
    }

    async fn row_version(
        &self,
        _: &mut MemoryTx,
        subject: &ChangeSubject,
    ) -> StoreResult<Option<u64>> {
        Ok(self.lock().row_version(subject))
    }

    async fn delete_row(&self, tx: &mut MemoryTx, subject: &ChangeSubject) -> StoreResult<bool> {
        let existed = self.lock().row_version(subject).is_some();
        let subject = subject.clone();
        tx.then(move |state| state.remove_row(&subject));
        Ok(existed)
    }

    async fn stamp_row(&self, tx: &mut MemoryTx, subject: ChangeSubject) -> StoreResult<u64> {
        let version = self.lock().next_version();
        let at = self.clock.now();
        tx.then(move |state| state.record_change(subject, version, at));
        Ok(version)
    }

    async fn commit(&self, tx: MemoryTx) -> StoreResult<()> {
        let mut state = self.lock();
        for write in tx.writes {
            write(&mut state);
        }
        Ok(())
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

#[async_trait]
impl PolicyRows for MemoryStore {
    async fn fetch_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>> {
        Ok(self.lock().policies.get(tenant).cloned().map(Arc::new))
    }

    async fn write_policy_row(&self, tx: &mut MemoryTx, stored: &StoredPolicy) -> StoreResult<()> {
        let stored = stored.clone();
        tx.then(move |state| {
            state
                .policies
                .insert(stored.policy.tenant_id.clone(), stored);
        });
        Ok(())
    }
}

#[async_trait]
impl ConfigRows for MemoryStore {
    async fn fetch_patch(&self, level: &ConfigLevel) -> StoreResult<Option<StoredPatch>> {
        Ok(self.lock().configs.get(level).cloned())
    }

    /// The writer lock, held since `begin_for`, already excludes every other writer.
    async fn patch_for_update(
        &self,
        _: &mut MemoryTx,
        level: &ConfigLevel,
    ) -> StoreResult<Option<StoredPatch>> {
        self.fetch_patch(level).await
    }

    async fn write_patch_row(&self, tx: &mut MemoryTx, stored: &StoredPatch) -> StoreResult<()> {
        let stored = stored.clone();
        tx.then(move |state| {
            state.configs.insert(stored.level.clone(), stored);
        });
        Ok(())
    }
}

#[async_trait]
impl MembershipRows for MemoryStore {
    async fn fetch_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> StoreResult<Option<Membership>> {
        let key = (tenant.clone(), user.clone());
        Ok(self.lock().members.get(&key).cloned())
    }

    /// Ordered by user id: the map's order.
    async fn fetch_members(&self, tenant: &TenantId) -> StoreResult<Vec<Membership>> {
        let state = self.lock();
        let members = state.members.values().filter(|m| &m.tenant_id == tenant);
        Ok(members.cloned().collect())
    }

    async fn write_membership_row(
        &self,
        tx: &mut MemoryTx,
        (tenant, user): (&TenantId, &UserId),
        input: &MembershipInput,
        version: u64,
    ) -> StoreResult<Membership> {
        let now = self.clock.now();
        let key = (tenant.clone(), user.clone());
        let created_at = self.lock().members.get(&key).map_or(now, |m| m.created_at);
        let membership = Membership {
            tenant_id: tenant.clone(),
            user_id: user.clone(),
            role: input.role,
            status: input.status,
            version,
            created_at,
            updated_at: now,
        };
        let stored = membership.clone();
        tx.then(move |state| {
            state.members.insert(key, stored);
        });
        Ok(membership)
    }
}
