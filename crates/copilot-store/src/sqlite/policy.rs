use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::TenantId;
use copilot_domain::clock::from_micros;
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use sqlx::Row;

use super::{SqliteStore, to_u64};
use crate::traits::PolicyStore;
use crate::{ChangeSubject, StoreError, StoreResult};

#[async_trait]
impl PolicyStore for SqliteStore {
    async fn get_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>> {
        let row = sqlx::query(
            "SELECT document, version, updated_at, updated_by FROM tenant_llm_policies WHERE tenant_id = ?",
        )
        .bind(tenant.as_str())
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let document: String = row.try_get("document")?;
        let policy: TenantLlmPolicy =
            serde_json::from_str(&document).map_err(|e| StoreError::corrupt("policy", e))?;
        Ok(Some(Arc::new(StoredPolicy {
            policy,
            version: to_u64(row.try_get("version")?, "version")?,
            updated_at: from_micros(row.try_get("updated_at")?),
            updated_by: row.try_get("updated_by")?,
        })))
    }

    async fn put_policy(
        &self,
        policy: &TenantLlmPolicy,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPolicy> {
        crate::versioned::put_policy(self, policy, expected_version, actor).await
    }

    async fn delete_policy(
        &self,
        tenant: &TenantId,
        expected_version: Option<u64>,
    ) -> StoreResult<u64> {
        let subject = ChangeSubject::Policy(tenant.clone());
        crate::versioned::delete_versioned(self, subject, expected_version).await
    }
}
