//! The policy, config and membership stores of every backend in this crate, written once
//! (blanket impls over the backends' statements). Each backend supplies only its statements ([`RowStatements`]: its
//! dialect, its locking, where its versions come from; [`ConfigRows`], [`PolicyRows`],
//! [`MembershipRows`]: its reads and upserts); the order of steps and the rules (a missing row
//! is `NotFound`, `If-Match` is checked against the locked row, the version and `updatedAt` are
//! taken holding the lock, the stored row is built here) live here.

use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::config::{ConfigLevel, ConfigPatch, StoredPatch};
use copilot_domain::membership::{Membership, MembershipInput};
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use copilot_domain::{TenantId, Timestamp, UserId};

use crate::error::check_expected;
use crate::traits::{ConfigStore, MembershipStore, PolicyStore};
use crate::{ChangeSubject, StoreError, StoreResult};

/// The statements of one backend over the row a [`ChangeSubject`] names (a policy, a config
/// level, a membership, a conversation with its messages).
#[async_trait]
pub(crate) trait RowStatements: Send + Sync {
    type Tx: Send;

    /// A write transaction holding the write lock of `subject`.
    async fn begin_for(&self, subject: &ChangeSubject) -> StoreResult<Self::Tx>;

    /// The row's version, locked for the rest of the transaction; `None` when there is no row.
    async fn row_version(
        &self,
        tx: &mut Self::Tx,
        subject: &ChangeSubject,
    ) -> StoreResult<Option<u64>>;

    /// Deletes the row (and what belongs to it); `false` when there was none.
    async fn delete_row(&self, tx: &mut Self::Tx, subject: &ChangeSubject) -> StoreResult<bool>;

    /// A fresh version for a write to `subject`, recorded (and announced) as configured.
    async fn stamp_row(&self, tx: &mut Self::Tx, subject: ChangeSubject) -> StoreResult<u64>;

    async fn commit(&self, tx: Self::Tx) -> StoreResult<()>;

    /// The store's clock.
    fn now(&self) -> Timestamp;
}

/// A backend's statements over config levels.
#[async_trait]
pub(crate) trait ConfigRows: RowStatements {
    /// A config level's stored patch, read outside any write.
    async fn fetch_patch(&self, level: &ConfigLevel) -> StoreResult<Option<StoredPatch>>;

    /// A config level's stored patch, locked for a read-modify-write (a level with no row yet
    /// is claimed, so concurrent first writers queue too); `None` when there is none.
    async fn patch_for_update(
        &self,
        tx: &mut Self::Tx,
        level: &ConfigLevel,
    ) -> StoreResult<Option<StoredPatch>>;

    /// Writes a config level's patch as `stored` says.
    async fn write_patch_row(&self, tx: &mut Self::Tx, stored: &StoredPatch) -> StoreResult<()>;
}

/// A backend's statements over policies.
#[async_trait]
pub(crate) trait PolicyRows: RowStatements {
    async fn fetch_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>>;

    /// Writes a tenant's policy as `stored` says.
    async fn write_policy_row(&self, tx: &mut Self::Tx, stored: &StoredPolicy) -> StoreResult<()>;
}

/// A backend's statements over memberships.
#[async_trait]
pub(crate) trait MembershipRows: RowStatements {
    async fn fetch_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> StoreResult<Option<Membership>>;

    /// Every membership of the tenant, ordered by user id (byte order).
    async fn fetch_members(&self, tenant: &TenantId) -> StoreResult<Vec<Membership>>;

    /// Writes a membership at `version`; returns the stored row.
    async fn write_membership_row(
        &self,
        tx: &mut Self::Tx,
        key: (&TenantId, &UserId),
        input: &MembershipInput,
        version: u64,
    ) -> StoreResult<Membership>;
}

/// Deletes the row `subject` names, if `expected` (when given) is its version; returns the
/// version the deletion took. Nothing is written unless every step succeeds.
pub(crate) async fn delete_versioned<S: RowStatements>(
    statements: &S,
    subject: ChangeSubject,
    expected: Option<u64>,
) -> StoreResult<u64> {
    let mut tx = statements.begin_for(&subject).await?;
    if expected.is_some() {
        let current = statements
            .row_version(&mut tx, &subject)
            .await?
            .ok_or(StoreError::NotFound)?;
        check_expected(Some(current), expected)?;
    }
    if !statements.delete_row(&mut tx, &subject).await? {
        return Err(StoreError::NotFound);
    }
    let version = statements.stamp_row(&mut tx, subject).await?;
    statements.commit(tx).await?;
    Ok(version)
}

/// Begins a write of the row `subject` names: its write lock taken, `expected` (when given)
/// checked against the locked row, and the write's version taken. The caller writes the row in
/// the returned transaction and commits it.
pub(crate) async fn begin_versioned<S: RowStatements>(
    statements: &S,
    subject: ChangeSubject,
    expected: Option<u64>,
) -> StoreResult<(S::Tx, u64)> {
    let mut tx = statements.begin_for(&subject).await?;
    if expected.is_some() {
        let current = statements.row_version(&mut tx, &subject).await?;
        check_expected(current, expected)?;
    }
    let version = statements.stamp_row(&mut tx, subject).await?;
    Ok((tx, version))
}

/// A level's patch as written now, by `actor`, at `version` (the clock read holding the lock,
/// so `updatedAt` follows the version).
fn stored_patch<S: RowStatements>(
    statements: &S,
    level: &ConfigLevel,
    patch: ConfigPatch,
    version: u64,
    actor: &str,
) -> StoredPatch {
    StoredPatch {
        level: level.clone(),
        patch,
        version,
        updated_at: statements.now(),
        updated_by: actor.to_owned(),
    }
}

/// The backends' policy store: their statements in the shared flow.
#[async_trait]
impl<S: PolicyRows> PolicyStore for S {
    async fn get_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>> {
        self.fetch_policy(tenant).await
    }

    async fn put_policy(
        &self,
        policy: &TenantLlmPolicy,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPolicy> {
        let subject = ChangeSubject::Policy(policy.tenant_id.clone());
        let (mut tx, version) = begin_versioned(self, subject, expected_version).await?;
        let stored = StoredPolicy {
            policy: policy.clone(),
            version,
            updated_at: self.now(),
            updated_by: actor.to_owned(),
        };
        self.write_policy_row(&mut tx, &stored).await?;
        self.commit(tx).await?;
        Ok(stored)
    }

    async fn delete_policy(&self, tenant: &TenantId, expected: Option<u64>) -> StoreResult<u64> {
        delete_versioned(self, ChangeSubject::Policy(tenant.clone()), expected).await
    }
}

/// The backends' config store: their statements in the shared flows.
#[async_trait]
impl<S: ConfigRows> ConfigStore for S {
    async fn get_patch(&self, level: &ConfigLevel) -> StoreResult<Option<StoredPatch>> {
        self.fetch_patch(level).await
    }

    async fn put_patch(
        &self,
        level: &ConfigLevel,
        patch: &ConfigPatch,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPatch> {
        let subject = ChangeSubject::Config(level.clone());
        let (mut tx, version) = begin_versioned(self, subject, expected_version).await?;
        let stored = stored_patch(self, level, patch.clone(), version, actor);
        self.write_patch_row(&mut tx, &stored).await?;
        self.commit(tx).await?;
        Ok(stored)
    }

    /// Against the locked current patch, so concurrent merges all land.
    async fn merge_patch(
        &self,
        level: &ConfigLevel,
        merge_patch: &serde_json::Value,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPatch> {
        let subject = ChangeSubject::Config(level.clone());
        let mut tx = self.begin_for(&subject).await?;
        let current = self.patch_for_update(&mut tx, level).await?;
        check_expected(current.as_ref().map(|p| p.version), expected_version)?;
        let merged = current
            .map(|p| p.patch)
            .unwrap_or_default()
            .merge(merge_patch)?;
        let version = self.stamp_row(&mut tx, subject).await?;
        let stored = stored_patch(self, level, merged, version, actor);
        self.write_patch_row(&mut tx, &stored).await?;
        self.commit(tx).await?;
        Ok(stored)
    }

    async fn delete_patch(&self, level: &ConfigLevel, expected: Option<u64>) -> StoreResult<u64> {
        delete_versioned(self, ChangeSubject::Config(level.clone()), expected).await
    }
}

/// The backends' membership store: their statements in the shared flow.
#[async_trait]
impl<S: MembershipRows> MembershipStore for S {
    async fn get_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> StoreResult<Option<Membership>> {
        self.fetch_membership(tenant, user).await
    }

    async fn put_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
        input: &MembershipInput,
    ) -> StoreResult<Membership> {
        let subject = ChangeSubject::Membership(tenant.clone(), user.clone());
        let (mut tx, version) = begin_versioned(self, subject, None).await?;
        let stored = self
            .write_membership_row(&mut tx, (tenant, user), input, version)
            .await?;
        self.commit(tx).await?;
        Ok(stored)
    }

    async fn delete_membership(&self, tenant: &TenantId, user: &UserId) -> StoreResult<u64> {
        let subject = ChangeSubject::Membership(tenant.clone(), user.clone());
        delete_versioned(self, subject, None).await
    }

    async fn list_members(&self, tenant: &TenantId) -> StoreResult<Vec<Membership>> {
        self.fetch_members(tenant).await
    }
}
