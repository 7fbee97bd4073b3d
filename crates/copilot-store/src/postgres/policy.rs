use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::TenantId;
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};

use super::{PostgresStore, WriteTx, to_i64, to_u64};
use crate::versioned::PolicyRows;
use crate::{StoreError, StoreResult};

#[async_trait]
impl PolicyRows for PostgresStore {
    async fn fetch_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>> {
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

    async fn write_policy_row(&self, tx: &mut WriteTx, stored: &StoredPolicy) -> StoreResult<()> {
        let mut sql = QueryBuilder::<Postgres>::new("INSERT INTO copilot.tenant_llm_policies");
        let (policy, version) = (&stored.policy, to_i64(stored.version)?);
        let (tenant, at, actor) = (
            policy.tenant_id.as_str(),
            stored.updated_at,
            &stored.updated_by,
        );
        crate::sql::push_policy_upsert(&mut sql, tenant, Json(policy), version, at, actor);
        let query = sql.build().persistent(self.persistent());
        query.execute(&mut **tx).await?;
        Ok(())
    }
}
