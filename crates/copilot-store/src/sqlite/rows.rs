//! SQLite's statements for the shared write flows (`crate::versioned`).

use async_trait::async_trait;
use copilot_domain::config::{ConfigLevel, ConfigPatch, StoredPatch};
use copilot_domain::membership::{Membership, MembershipInput};
use copilot_domain::policy::TenantLlmPolicy;
use copilot_domain::{TenantId, Timestamp, UserId};
use sqlx::QueryBuilder;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Row, Sqlite, Transaction};

use super::config::{key as level_key, read_patch};
use super::{SqliteStore, micros, to_u64, version_param};
use crate::versioned::RowStatements;
use crate::{ChangeSubject, StoreError, StoreResult};

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

    /// The database write lock (`BEGIN IMMEDIATE`) already excludes every other writer.
    async fn patch_for_update(
        &self,
        tx: &mut Self::Tx,
        level: &ConfigLevel,
    ) -> StoreResult<Option<StoredPatch>> {
        read_patch(&mut **tx, level).await
    }

    async fn write_patch_row(
        &self,
        tx: &mut Self::Tx,
        level: &ConfigLevel,
        patch: ConfigPatch,
        version: u64,
        actor: &str,
    ) -> StoreResult<StoredPatch> {
        self.write_patch(tx, level, patch, version, actor).await
    }

    fn now(&self) -> Timestamp {
        SqliteStore::now(self)
    }

    async fn write_policy_row(
        &self,
        tx: &mut Self::Tx,
        policy: &TenantLlmPolicy,
        version: u64,
        at: Timestamp,
        actor: &str,
    ) -> StoreResult<()> {
        let document =
            serde_json::to_string(policy).map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut sql = QueryBuilder::<Sqlite>::new("INSERT INTO tenant_llm_policies");
        let (tenant, version) = (policy.tenant_id.as_str(), version_param(version)?);
        crate::sql::push_policy_upsert(&mut sql, tenant, document, version, micros(at), actor);
        sql.build().execute(&mut **tx).await?;
        Ok(())
    }

    async fn write_membership_row(
        &self,
        tx: &mut Self::Tx,
        (tenant, user): (&TenantId, &UserId),
        input: &MembershipInput,
        version: u64,
    ) -> StoreResult<Membership> {
        let mut sql = QueryBuilder::<Sqlite>::new("INSERT INTO tenant_memberships");
        let (key, at) = ((tenant.as_str(), user.as_str()), micros(self.now()));
        crate::sql::push_membership_upsert(&mut sql, key, input, version_param(version)?, at);
        sql.push(super::membership::COLUMNS);
        let row = sql.build().fetch_one(&mut **tx).await?;
        super::membership::decode(&row)
    }
}
