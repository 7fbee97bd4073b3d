//! The auth validation cache: the caching decorator of [`MembershipStore`]. Positive and
//! negative answers are cached (negative ones for the short negative TTL), store errors never
//! are, and a membership change or suspension invalidates the key at once
//! (DESIGN.md section 9, item 12).

use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::membership::{Membership, MembershipInput};
use copilot_domain::{TenantId, UserId};
use copilot_store::{MembershipStore, StoreResult};

use crate::tier::CacheTier;

pub struct CachedMembershipStore {
    inner: Arc<dyn MembershipStore>,
    tier: Arc<CacheTier<Membership>>,
}

impl CachedMembershipStore {
    pub fn new(inner: Arc<dyn MembershipStore>, tier: CacheTier<Membership>) -> Self {
        Self {
            inner,
            tier: Arc::new(tier),
        }
    }

    pub fn tier(&self) -> &CacheTier<Membership> {
        &self.tier
    }

    fn key(&self, tenant: &TenantId, user: &UserId) -> crate::keys::Key {
        crate::keys::membership(&self.tier.settings().prefix, tenant, user)
    }
}

#[async_trait]
impl MembershipStore for CachedMembershipStore {
    async fn get_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> StoreResult<Option<Membership>> {
        let found = self
            .tier
            .get(&self.key(tenant, user), || async {
                Ok(self
                    .inner
                    .get_membership(tenant, user)
                    .await?
                    .map(|m| (m.version, m)))
            })
            .await?;
        Ok(found.map(|m| m.as_ref().clone()))
    }

    async fn put_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
        input: &MembershipInput,
    ) -> StoreResult<Membership> {
        let stored = self.inner.put_membership(tenant, user, input).await?;
        self.tier
            .write_through(&self.key(tenant, user), stored.version, stored.clone())
            .await;
        Ok(stored)
    }

    async fn delete_membership(&self, tenant: &TenantId, user: &UserId) -> StoreResult<u64> {
        let version = self.inner.delete_membership(tenant, user).await?;
        self.tier.invalidate(&self.key(tenant, user), version).await;
        Ok(version)
    }

    async fn list_members(&self, tenant: &TenantId) -> StoreResult<Vec<Membership>> {
        self.inner.list_members(tenant).await
    }
}
