use async_trait::async_trait;
use copilot_domain::access::TenantRole;
use copilot_domain::clock::from_micros;
use copilot_domain::membership::{Membership, MembershipInput, MembershipStatus};
use copilot_domain::{TenantId, UserId};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};

use super::{SqliteStore, micros, to_u64, version_param};
use crate::versioned::MembershipRows;
use crate::{StoreError, StoreResult};

pub(super) const COLUMNS: &str =
    "tenant_id, user_id, role, status, version, created_at, updated_at";

pub(super) fn decode(row: &SqliteRow) -> StoreResult<Membership> {
    let text = |col: &str| -> StoreResult<String> { Ok(row.try_get::<String, _>(col)?) };
    Ok(Membership {
        tenant_id: TenantId::parse(&text("tenant_id")?)
            .map_err(|e| StoreError::corrupt("tenant_id", e))?,
        user_id: UserId::parse(&text("user_id")?).map_err(|e| StoreError::corrupt("user_id", e))?,
        role: TenantRole::parse(&text("role")?)
            .ok_or_else(|| StoreError::corrupt("role", "unknown"))?,
        status: MembershipStatus::parse(&text("status")?)
            .ok_or_else(|| StoreError::corrupt("status", "unknown"))?,
        version: to_u64(row.try_get("version")?, "version")?,
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
    })
}

#[async_trait]
impl MembershipRows for SqliteStore {
    async fn fetch_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> StoreResult<Option<Membership>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tenant_memberships WHERE tenant_id = ? AND user_id = ?"
        ))
        .bind(tenant.as_str())
        .bind(user.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn fetch_members(&self, tenant: &TenantId) -> StoreResult<Vec<Membership>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tenant_memberships WHERE tenant_id = ? ORDER BY user_id"
        ))
        .bind(tenant.as_str())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(decode).collect()
    }

    async fn write_membership_row(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        (tenant, user): (&TenantId, &UserId),
        input: &MembershipInput,
        version: u64,
    ) -> StoreResult<Membership> {
        let mut sql = QueryBuilder::<Sqlite>::new("INSERT INTO tenant_memberships");
        let (key, at) = ((tenant.as_str(), user.as_str()), micros(self.now()));
        crate::sql::push_membership_upsert(&mut sql, key, input, version_param(version)?, at);
        sql.push(COLUMNS);
        let row = sql.build().fetch_one(&mut **tx).await?;
        decode(&row)
    }
}
