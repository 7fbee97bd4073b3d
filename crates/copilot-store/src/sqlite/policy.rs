use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::TenantId;
use copilot_domain::clock::from_micros;
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::{SqliteStore, micros, to_u64, version_param};
use crate::versioned::PolicyRows;
use crate::{StoreError, StoreResult};

#[async_trait]
impl PolicyRows for SqliteStore {
    async fn fetch_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>> {
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

    async fn write_policy_row(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        stored: &StoredPolicy,
    ) -> StoreResult<()> {
        let document = serde_json::to_string(&stored.policy)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut sql = QueryBuilder::<Sqlite>::new("INSERT INTO tenant_llm_policies");
        let (tenant, version) = (
            stored.policy.tenant_id.as_str(),
            version_param(stored.version)?,
        );
        let (at, actor) = (micros(stored.updated_at), &stored.updated_by);
        crate::sql::push_policy_upsert(&mut sql, tenant, document, version, at, actor);
        sql.build().execute(&mut **tx).await?;
        Ok(())
    }
}
