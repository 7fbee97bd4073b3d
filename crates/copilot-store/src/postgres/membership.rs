use async_trait::async_trait;
use copilot_domain::Timestamp;
use copilot_domain::membership::{Membership, MembershipInput};
use copilot_domain::{TenantId, UserId};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Postgres, QueryBuilder};

use super::{PostgresStore, WriteTx, to_i64};
use crate::StoreResult;
use crate::sql::MembershipRow;
use crate::versioned::MembershipRows;

macro_rules! columns {
    () => {
        "tenant_id, user_id, role, status, version, created_at, updated_at"
    };
}

pub(super) const COLUMNS: &str = columns!();

pub(super) fn decode(row: &PgRow) -> StoreResult<Membership> {
    MembershipRow::<Timestamp>::from_row(row)?.decode(|at| at)
}

#[async_trait]
impl MembershipRows for PostgresStore {
    async fn fetch_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> StoreResult<Option<Membership>> {
        let mut conn = self.read().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM copilot.tenant_memberships WHERE tenant_id = $1 AND user_id = $2"
        ))
        .persistent(self.persistent())
        .bind(tenant.as_str())
        .bind(user.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        conn.finish().await?;
        row.as_ref().map(decode).transpose()
    }

    async fn fetch_members(&self, tenant: &TenantId) -> StoreResult<Vec<Membership>> {
        let mut conn = self.read().await?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM copilot.tenant_memberships WHERE tenant_id = $1 ORDER BY user_id COLLATE \"C\""
        ))
        .persistent(self.persistent())
        .bind(tenant.as_str())
        .fetch_all(&mut *conn)
        .await?;
        conn.finish().await?;
        rows.iter().map(decode).collect()
    }

    async fn write_membership_row(
        &self,
        tx: &mut WriteTx,
        (tenant, user): (&TenantId, &UserId),
        input: &MembershipInput,
        version: u64,
    ) -> StoreResult<Membership> {
        let mut sql = QueryBuilder::<Postgres>::new("INSERT INTO copilot.tenant_memberships");
        let (key, at) = ((tenant.as_str(), user.as_str()), self.now());
        crate::sql::push_membership_upsert(&mut sql, key, input, to_i64(version)?, at);
        sql.push(COLUMNS);
        let row = sql.build().persistent(self.persistent());
        decode(&row.fetch_one(&mut **tx).await?)
    }
}
