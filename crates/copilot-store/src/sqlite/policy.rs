use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::TenantId;
use copilot_domain::clock::from_micros;
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use sqlx::Row;

use super::{SqliteStore, micros, to_u64, version_param};
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
        let document =
            serde_json::to_string(policy).map_err(|e| StoreError::Internal(e.to_string()))?;
        let subject = ChangeSubject::Policy(policy.tenant_id.clone());
        let (mut tx, version) =
            crate::versioned::begin_versioned(self, subject, expected_version).await?;
        let now = self.now();
        sqlx::query(
            "INSERT INTO tenant_llm_policies (tenant_id, document, version, updated_at, updated_by)
             VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (tenant_id) DO UPDATE SET document = excluded.document, version = excluded.version,
                 updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(policy.tenant_id.as_str())
        .bind(&document)
        .bind(version_param(version)?)
        .bind(micros(now))
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(StoredPolicy {
            policy: policy.clone(),
            version,
            updated_at: now,
            updated_by: actor.to_owned(),
        })
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
