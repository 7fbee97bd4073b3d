use async_trait::async_trait;
use copilot_domain::config::{ConfigLevel, ConfigPatch, StoredPatch};
use sqlx::types::Json;
use sqlx::{PgConnection, Row};

use super::{PostgresStore, WriteTx, to_i64, to_u64};
use crate::versioned::ConfigRows;
use crate::{StoreError, StoreResult};

/// `(tenant_id, user_id)` of a level; NULL stands for "none" (NULLS NOT DISTINCT keeps it unique).
fn key(level: &ConfigLevel) -> (Option<&str>, Option<&str>) {
    match level {
        ConfigLevel::Global => (None, None),
        ConfigLevel::Tenant(t) => (Some(t.as_str()), None),
        ConfigLevel::User(t, u) => (Some(t.as_str()), Some(u.as_str())),
    }
}

/// One statement per level kind, each with a condition the unique index serves
/// (`IS NOT DISTINCT FROM` would not use it).
macro_rules! per_level {
    ($head:literal, $tail:literal) => {
        [
            concat!($head, " WHERE tenant_id IS NULL AND user_id IS NULL", $tail),
            concat!($head, " WHERE tenant_id = $1 AND user_id IS NULL", $tail),
            concat!($head, " WHERE tenant_id = $1 AND user_id = $2", $tail),
        ]
    };
}

/// The statement for `level` out of `per_level!`, with its parameters bound.
pub(super) fn level_query<'q>(
    statements: &[&'static str; 3],
    level: &'q ConfigLevel,
    persistent: bool,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (tenant, user) = key(level);
    let index = usize::from(tenant.is_some()) + usize::from(user.is_some());
    let mut query = sqlx::query(statements[index]).persistent(persistent);
    if let Some(t) = tenant {
        query = query.bind(t);
    }
    if let Some(u) = user {
        query = query.bind(u);
    }
    query
}

const SELECT: [&str; 3] = per_level!(
    "SELECT patch, version, updated_at, updated_by FROM copilot.conversation_configs",
    ""
);
const SELECT_FOR_UPDATE: [&str; 3] = per_level!(
    "SELECT patch, version, updated_at, updated_by FROM copilot.conversation_configs",
    " FOR UPDATE"
);
pub(super) const DELETE_LEVEL: [&str; 3] =
    per_level!("DELETE FROM copilot.conversation_configs", "");

impl PostgresStore {
    /// Reads a level; `lock` takes a row lock for a read-modify-write.
    pub(super) async fn read_patch(
        &self,
        conn: &mut PgConnection,
        level: &ConfigLevel,
        lock: bool,
    ) -> StoreResult<Option<StoredPatch>> {
        let statements = if lock { &SELECT_FOR_UPDATE } else { &SELECT };
        let row = level_query(statements, level, self.persistent())
            .fetch_optional(conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let Json(patch): Json<ConfigPatch> = row
            .try_get("patch")
            .map_err(|e| StoreError::corrupt("config patch", e))?;
        Ok(Some(StoredPatch {
            level: level.clone(),
            patch,
            version: to_u64(row.try_get("version")?, "version")?,
            updated_at: row.try_get("updated_at")?,
            updated_by: row.try_get("updated_by")?,
        }))
    }
}

#[async_trait]
impl ConfigRows for PostgresStore {
    async fn fetch_patch(&self, level: &ConfigLevel) -> StoreResult<Option<StoredPatch>> {
        let mut conn = self.read().await?;
        let patch = self.read_patch(&mut conn, level, false).await?;
        conn.finish().await?;
        Ok(patch)
    }

    async fn patch_for_update(
        &self,
        tx: &mut WriteTx,
        level: &ConfigLevel,
    ) -> StoreResult<Option<StoredPatch>> {
        // A missing level has no row to lock: claim it first (a placeholder with version 0 that
        // this transaction either replaces or rolls back), so concurrent first merges queue up
        // on the row instead of overwriting each other.
        let (tenant, user) = key(level);
        sqlx::query(
            "INSERT INTO copilot.conversation_configs (tenant_id, user_id, patch, version, updated_at, updated_by)
             VALUES ($1, $2, '{}', 0, now(), '')
             ON CONFLICT ON CONSTRAINT conversation_configs_level DO NOTHING",
        )
        .persistent(self.persistent())
        .bind(tenant)
        .bind(user)
        .execute(&mut **tx)
        .await?;
        Ok(self
            .read_patch(tx, level, true)
            .await?
            .filter(|p| p.version > 0))
    }

    async fn write_patch_row(&self, tx: &mut WriteTx, stored: &StoredPatch) -> StoreResult<()> {
        let (tenant, user) = key(&stored.level);
        sqlx::query(
            "INSERT INTO copilot.conversation_configs (tenant_id, user_id, patch, version, updated_at, updated_by)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT ON CONSTRAINT conversation_configs_level DO UPDATE SET patch = excluded.patch,
                 version = excluded.version, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .persistent(self.persistent())
        .bind(tenant)
        .bind(user)
        .bind(Json(&stored.patch))
        .bind(to_i64(stored.version)?)
        .bind(stored.updated_at)
        .bind(&stored.updated_by)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
