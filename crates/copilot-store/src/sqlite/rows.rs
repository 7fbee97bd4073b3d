//! SQLite's statements for the shared write flows (`crate::versioned`).

use async_trait::async_trait;
use copilot_domain::Timestamp;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Row, Sqlite, Transaction};

use super::config::key as level_key;
use super::{SqliteStore, to_u64};
use crate::versioned::RowStatements;
use crate::{ChangeSubject, StoreResult};

/// `?`, `?` of a statement over the row `subject` names, in the order
/// `(tenant, user)`, `(tenant)` or `(conversation id, tenant)`.
fn keyed<'q>(sql: &'q str, subject: &'q ChangeSubject) -> Query<'q, Sqlite, SqliteArguments<'q>> {
    let query = sqlx::query(sql);
    match subject {
        ChangeSubject::Policy(t) => query.bind(t.as_str()),
        ChangeSubject::Membership(t, u) => query.bind(t.as_str()).bind(u.as_str()),
        ChangeSubject::Conversation(t, id) => query.bind(id.to_string()).bind(t.as_str()),
        ChangeSubject::Config(level) => {
            let (tenant, user) = level_key(level);
            query.bind(tenant).bind(user)
        }
    }
}

/// The table and key condition of the row `subject` names (bound by [`keyed`]).
fn table(subject: &ChangeSubject) -> &'static str {
    match subject {
        ChangeSubject::Policy(_) => "tenant_llm_policies WHERE tenant_id = ?",
        ChangeSubject::Membership(..) => "tenant_memberships WHERE tenant_id = ? AND user_id = ?",
        ChangeSubject::Conversation(..) => "conversations WHERE id = ? AND tenant_id = ?",
        ChangeSubject::Config(_) => "conversation_configs WHERE tenant_id = ? AND user_id = ?",
    }
}

#[async_trait]
impl RowStatements for SqliteStore {
    type Tx = Transaction<'static, Sqlite>;

    /// `BEGIN IMMEDIATE`: the database write lock covers every key.
    async fn begin_for(&self, _: &ChangeSubject) -> StoreResult<Self::Tx> {
        self.begin_write().await
    }

    async fn row_version(
        &self,
        tx: &mut Self::Tx,
        subject: &ChangeSubject,
    ) -> StoreResult<Option<u64>> {
        let sql = format!("SELECT version FROM {}", table(subject));
        let row = keyed(&sql, subject).fetch_optional(&mut **tx).await?;
        row.map(|r| to_u64(r.try_get("version")?, "version"))
            .transpose()
    }

    async fn delete_row(&self, tx: &mut Self::Tx, subject: &ChangeSubject) -> StoreResult<bool> {
        if let ChangeSubject::Conversation(..) = subject {
            keyed(
                "DELETE FROM conversation_messages WHERE conversation_id =
                     (SELECT id FROM conversations WHERE id = ? AND tenant_id = ?)",
                subject,
            )
            .execute(&mut **tx)
            .await?;
        }
        let sql = format!("DELETE FROM {}", table(subject));
        let done = keyed(&sql, subject).execute(&mut **tx).await?;
        Ok(done.rows_affected() > 0)
    }

    async fn stamp_row(&self, tx: &mut Self::Tx, subject: ChangeSubject) -> StoreResult<u64> {
        self.stamp(tx, subject).await
    }

    async fn commit(&self, tx: Self::Tx) -> StoreResult<()> {
        Ok(tx.commit().await?)
    }

    fn now(&self) -> Timestamp {
        SqliteStore::now(self)
    }
}
