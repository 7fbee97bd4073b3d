//! PostgreSQL's statements for the shared write flows (`crate::versioned`).

use async_trait::async_trait;
use copilot_domain::Timestamp;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, Row};

use super::config::{DELETE_LEVEL, level_query};
use super::{PostgresStore, WriteTx, to_u64};
use crate::versioned::RowStatements;
use crate::{ChangeSubject, StoreResult};

/// `$1`(, `$2`) of a statement over the row `subject` names (config levels: `level_query`).
fn keyed<'q>(sql: &'q str, subject: &'q ChangeSubject) -> Query<'q, Postgres, PgArguments> {
    let query = sqlx::query(sql);
    match subject {
        ChangeSubject::Policy(t) => query.bind(t.as_str()),
        ChangeSubject::Membership(t, u) => query.bind(t.as_str()).bind(u.as_str()),
        ChangeSubject::Conversation(t, id) => query.bind(id.as_uuid()).bind(t.as_str()),
        // Never used: config levels have a statement per level kind.
        ChangeSubject::Config(_) => query,
    }
}

#[async_trait]
impl RowStatements for PostgresStore {
    type Tx = WriteTx;

    async fn begin_for(&self, subject: &ChangeSubject) -> StoreResult<WriteTx> {
        match subject {
            // An existing row to lock (creation takes a fresh id).
            ChangeSubject::Conversation(..) => self.begin().await,
            _ => self.begin_locked(subject).await,
        }
    }

    async fn row_version(
        &self,
        tx: &mut WriteTx,
        subject: &ChangeSubject,
    ) -> StoreResult<Option<u64>> {
        let sql = match subject {
            ChangeSubject::Config(level) => {
                return Ok(self.read_patch(tx, level, true).await?.map(|p| p.version));
            }
            ChangeSubject::Policy(_) => {
                "SELECT version FROM copilot.tenant_llm_policies WHERE tenant_id = $1 FOR UPDATE"
            }
            ChangeSubject::Membership(..) => {
                "SELECT version FROM copilot.tenant_memberships WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE"
            }
            ChangeSubject::Conversation(..) => {
                "SELECT version FROM copilot.conversations WHERE id = $1 AND tenant_id = $2 FOR UPDATE"
            }
        };
        let row = keyed(sql, subject)
            .persistent(self.persistent())
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|r| to_u64(r.try_get("version")?, "version"))
            .transpose()
    }

    async fn delete_row(&self, tx: &mut WriteTx, subject: &ChangeSubject) -> StoreResult<bool> {
        let query = match subject {
            ChangeSubject::Config(level) => level_query(&DELETE_LEVEL, level, self.persistent()),
            ChangeSubject::Policy(_) => keyed(
                "DELETE FROM copilot.tenant_llm_policies WHERE tenant_id = $1",
                subject,
            ),
            ChangeSubject::Membership(..) => keyed(
                "DELETE FROM copilot.tenant_memberships WHERE tenant_id = $1 AND user_id = $2",
                subject,
            ),
            // Its messages go with it (ON DELETE CASCADE).
            ChangeSubject::Conversation(..) => keyed(
                "DELETE FROM copilot.conversations WHERE id = $1 AND tenant_id = $2",
                subject,
            ),
        };
        let done = query
            .persistent(self.persistent())
            .execute(&mut **tx)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn stamp_row(&self, tx: &mut WriteTx, subject: ChangeSubject) -> StoreResult<u64> {
        self.stamp(tx, subject).await
    }

    async fn commit(&self, tx: WriteTx) -> StoreResult<()> {
        tx.commit().await
    }

    fn now(&self) -> Timestamp {
        PostgresStore::now(self)
    }
}
