use async_trait::async_trait;
use copilot_domain::clock::from_micros;
use copilot_domain::config::{ConfigLevel, ConfigPatch, StoredPatch};
use sqlx::{Row, Sqlite, Transaction};

use super::{SqliteStore, micros, to_u64, version_param};
use crate::versioned::ConfigRows;
use crate::{StoreError, StoreResult};

/// The row key of a level: '' means "no tenant" / "no user".
pub(super) fn key(level: &ConfigLevel) -> (&str, &str) {
    match level {
        ConfigLevel::Global => ("", ""),
        ConfigLevel::Tenant(t) => (t.as_str(), ""),
        ConfigLevel::User(t, u) => (t.as_str(), u.as_str()),
    }
}

async fn read_patch<'e, E>(executor: E, level: &ConfigLevel) -> StoreResult<Option<StoredPatch>>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let (tenant, user) = key(level);
    let row = sqlx::query(
        "SELECT patch, version, updated_at, updated_by FROM conversation_configs WHERE tenant_id = ? AND user_id = ?",
    )
    .bind(tenant)
    .bind(user)
    .fetch_optional(executor)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.try_get("patch")?;
    let patch: ConfigPatch =
        serde_json::from_str(&text).map_err(|e| StoreError::corrupt("config patch", e))?;
    Ok(Some(StoredPatch {
        level: level.clone(),
        patch,
        version: to_u64(row.try_get("version")?, "version")?,
        updated_at: from_micros(row.try_get("updated_at")?),
        updated_by: row.try_get("updated_by")?,
    }))
}

#[async_trait]
impl ConfigRows for SqliteStore {
    async fn fetch_patch(&self, level: &ConfigLevel) -> StoreResult<Option<StoredPatch>> {
        read_patch(&self.reader, level).await
    }

    /// The database write lock (`BEGIN IMMEDIATE`) already excludes every other writer.
    async fn patch_for_update(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        level: &ConfigLevel,
    ) -> StoreResult<Option<StoredPatch>> {
        read_patch(&mut **tx, level).await
    }

    async fn write_patch_row(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        stored: &StoredPatch,
    ) -> StoreResult<()> {
        let text = serde_json::to_string(&stored.patch)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let (tenant, user) = key(&stored.level);
        sqlx::query(
            "INSERT INTO conversation_configs (tenant_id, user_id, patch, version, updated_at, updated_by)
             VALUES (?, ?, ?, ?, ?, ?)
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET patch = excluded.patch, version = excluded.version,
                 updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(tenant)
        .bind(user)
        .bind(&text)
        .bind(version_param(stored.version)?)
        .bind(micros(stored.updated_at))
        .bind(&stored.updated_by)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
