use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::TenantId;
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use sqlx::Row;
use sqlx::types::Json;

use super::{PostgresStore, to_i64, to_u64};
use crate::error::check_expected;
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
        let mut tx = self
            .begin_locked(&ChangeSubject::Policy(policy.tenant_id.clone()))
            .await?;
        // FOR UPDATE serializes writers of one tenant's policy, so the version check holds.
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM copilot.tenant_llm_policies WHERE tenant_id = $1 FOR UPDATE",
        )
        .persistent(self.persistent())
        .bind(policy.tenant_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        check_expected(
            current.map(|v| to_u64(v, "version")).transpose()?,
            expected_version,
        )?;
        let version = self
            .stamp(&mut tx, ChangeSubject::Policy(policy.tenant_id.clone()))
            .await?;
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
        let mut tx = self
            .begin_locked(&ChangeSubject::Policy(tenant.clone()))
            .await?;
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM copilot.tenant_llm_policies WHERE tenant_id = $1 FOR UPDATE",
        )
        .persistent(self.persistent())
        .bind(tenant.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let current = to_u64(current.ok_or(StoreError::NotFound)?, "version")?;
        check_expected(Some(current), expected_version)?;
        sqlx::query("DELETE FROM copilot.tenant_llm_policies WHERE tenant_id = $1")
            .persistent(self.persistent())
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
        let version = self
            .stamp(&mut tx, ChangeSubject::Policy(tenant.clone()))
            .await?;
        tx.commit().await?;
        Ok(version)
    }
}
