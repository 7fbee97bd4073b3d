use async_trait::async_trait;
use copilot_domain::clock::from_micros;
use copilot_domain::membership::{Membership, MembershipInput};
use copilot_domain::{TenantId, UserId};
use sqlx::sqlite::SqliteRow;
use sqlx::{FromRow, QueryBuilder, Sqlite, Transaction};

use super::{SqliteStore, micros, version_param};
use crate::StoreResult;
use crate::sql::MembershipRow;
use crate::versioned::MembershipRows;

pub(super) const COLUMNS: &str =
    "tenant_id, user_id, role, status, version, created_at, updated_at";

pub(super) fn decode(row: &SqliteRow) -> StoreResult<Membership> {
    MembershipRow::<i64>::from_row(row)?.decode(from_micros)
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
