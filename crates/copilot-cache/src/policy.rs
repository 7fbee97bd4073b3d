//! The caching decorator of [`PolicyStore`]: one key per tenant, absence cached too
//! (DESIGN.md section 9, item 6).

use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::TenantId;
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use copilot_store::{PolicyStore, StoreResult};

use crate::tier::CacheTier;

pub struct CachedPolicyStore {
    inner: Arc<dyn PolicyStore>,
    tier: Arc<CacheTier<StoredPolicy>>,
}

impl CachedPolicyStore {
    pub fn new(inner: Arc<dyn PolicyStore>, tier: CacheTier<StoredPolicy>) -> Self {
        Self {
            inner,
            tier: Arc::new(tier),
        }
    }

    pub fn tier(&self) -> &CacheTier<StoredPolicy> {
        &self.tier
    }

    fn key(&self, tenant: &TenantId) -> crate::keys::Key {
        crate::keys::policy(&self.tier.settings().prefix, tenant)
    }
}

#[async_trait]
impl PolicyStore for CachedPolicyStore {
    async fn get_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>> {
        self.tier
            .get(&self.key(tenant), || async {
                Ok(self
                    .inner
                    .get_policy(tenant)
                    .await?
                    .map(|p| (p.version, Arc::unwrap_or_clone(p))))
            })
            .await
    }

    async fn put_policy(
        &self,
        policy: &TenantLlmPolicy,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPolicy> {
        let stored = self
            .inner
            .put_policy(policy, expected_version, actor)
            .await?;
        self.tier
            .write_through(&self.key(&policy.tenant_id), stored.version, stored.clone())
            .await;
        Ok(stored)
    }

    async fn delete_policy(
        &self,
        tenant: &TenantId,
        expected_version: Option<u64>,
    ) -> StoreResult<u64> {
        let version = self.inner.delete_policy(tenant, expected_version).await?;
        self.tier.invalidate(&self.key(tenant), version).await;
        Ok(version)
    }
}
