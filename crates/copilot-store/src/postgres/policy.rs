use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::TenantId;
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use sqlx::Row;
use sqlx::types::Json;

use super::{PostgresStore, to_i64, to_u64};
use crate::traits::PolicyStore;
use crate::{ChangeSubject, StoreError, StoreResult};

#[async_trait]
impl PolicyStore for PostgresStore {
    async fn get_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>> {
        let mut conn = self.read().await?;
        let row = sqlx::query(
            "SELECT document, version, updated_at, updated_by FROM copilot.tenant_llm_policies WHERE tenant_id = $1",
        )
        .persistent(self.persistent())
        .bind(tenant.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        conn.finish().await?;
        let Some(row) = row else { return Ok(None) };
        let Json(policy): Json<TenantLlmPolicy> = row
            .try_get("document")
            .map_err(|e| StoreError::corrupt("policy", e))?;
        Ok(Some(Arc::new(StoredPolicy {
            policy,
            version: to_u64(row.try_get("version")?, "version")?,
            updated_at: row.try_get("updated_at")?,
            updated_by: row.try_get("updated_by")?,
        })))
    }

    async fn put_policy(
        &self,
        policy: &TenantLlmPolicy,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPolicy> {
        let subject = ChangeSubject::Policy(policy.tenant_id.clone());
        let (mut tx, version) =
            crate::versioned::begin_versioned(self, subject, expected_version).await?;
        let now = self.now();
        sqlx::query(
            "INSERT INTO copilot.tenant_llm_policies (tenant_id, document, version, updated_at, updated_by)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id) DO UPDATE SET document = excluded.document, version = excluded.version,
                 updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .persistent(self.persistent())
        .bind(policy.tenant_id.as_str())
        .bind(Json(policy))
        .bind(to_i64(version)?)
        .bind(now)
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
