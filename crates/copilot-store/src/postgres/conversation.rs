use async_trait::async_trait;
use copilot_domain::clock::from_micros;
use copilot_domain::conversation::{
    Conversation, ConversationQuery, ConversationUpdate, Message, MessageQuery, MessageRole,
    MessageWrite, NewConversation, NewMessage, ShareAudience, TenantAccess,
};
use copilot_domain::{ConversationId, MessageId, TenantId, UserId};
use serde_json::{Map, Value};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{PostgresStore, WriteTx, to_i64, to_u64};
use crate::conversation_rows::{ConversationRows, MessageAt};
use crate::{ChangeSubject, StoreError, StoreResult};

macro_rules! conversation_columns {
    () => {
        "id, tenant_id, user_id, title, persona_id, jurisdictions, share_audience, tenant_access, archived_at, \
         created_at, updated_at, last_message_at, message_count, version"
    };
}

macro_rules! message_columns {
    () => {
        "id, conversation_id, seq, role, content, metadata, author_id, created_at, deleted_at, deleted_by"
    };
}

macro_rules! prefixed_message_columns {
    () => {
        "ins.id AS m_id, ins.conversation_id AS m_conversation_id, ins.seq AS m_seq, \
         ins.role AS m_role, ins.content AS m_content, ins.metadata AS m_metadata, \
         ins.author_id AS m_author_id, ins.created_at AS m_created_at, \
         ins.deleted_at AS m_deleted_at, ins.deleted_by AS m_deleted_by"
    };
}

fn decode_conversation(row: &PgRow) -> StoreResult<Conversation> {
    let tenant: String = row.try_get("tenant_id")?;
    let user: Option<String> = row.try_get("user_id")?;
    let audience: String = row.try_get("share_audience")?;
    let access: String = row.try_get("tenant_access")?;
    Ok(Conversation {
        id: ConversationId::from_uuid(row.try_get::<Uuid, _>("id")?),
        tenant_id: TenantId::parse(&tenant).map_err(|e| StoreError::corrupt("tenant_id", e))?,
        user_id: user
            .map(|u| UserId::parse(&u))
            .transpose()
            .map_err(|e| StoreError::corrupt("user_id", e))?,
        title: row.try_get("title")?,
        persona_id: row.try_get("persona_id")?,
        jurisdictions: row.try_get("jurisdictions")?,
        share_audience: ShareAudience::parse(&audience)
            .ok_or_else(|| StoreError::corrupt("share_audience", &audience))?,
        tenant_access: TenantAccess::parse(&access)
            .ok_or_else(|| StoreError::corrupt("tenant_access", &access))?,
        archived_at: row.try_get("archived_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_message_at: row.try_get("last_message_at")?,
        message_count: to_u64(row.try_get("message_count")?, "message_count")?,
        version: to_u64(row.try_get("version")?, "version")?,
    })
}

/// Message column names, in `message_columns!` order.
type MessageColumnNames = [&'static str; 10];
const MESSAGE_COLUMNS: MessageColumnNames = [
    "id",
    "conversation_id",
    "seq",
    "role",
    "content",
    "metadata",
    "author_id",
    "created_at",
    "deleted_at",
    "deleted_by",
];
/// The same columns as `prefixed_message_columns!` names them beside a conversation row.
const PREFIXED_MESSAGE_COLUMNS: MessageColumnNames = [
    "m_id",
    "m_conversation_id",
    "m_seq",
    "m_role",
    "m_content",
    "m_metadata",
    "m_author_id",
    "m_created_at",
    "m_deleted_at",
    "m_deleted_by",
];

fn decode_message(row: &PgRow) -> StoreResult<Message> {
    decode_message_named(row, &MESSAGE_COLUMNS)
}

fn decode_message_named(row: &PgRow, names: &MessageColumnNames) -> StoreResult<Message> {
    let [
        id,
        conversation_id,
        seq,
        role,
        content,
        metadata,
        author_id,
        created_at,
        deleted_at,
        deleted_by,
    ] = *names;
    let role_text: String = row.try_get(role)?;
    let author: Option<String> = row.try_get(author_id)?;
    let Json(metadata): Json<Map<String, Value>> = row.try_get(metadata)?;
    Ok(Message {
        id: MessageId::from_uuid(row.try_get::<Uuid, _>(id)?),
        conversation_id: ConversationId::from_uuid(row.try_get::<Uuid, _>(conversation_id)?),
        seq: to_u64(row.try_get(seq)?, "seq")?,
        role: MessageRole::parse(&role_text)
            .ok_or_else(|| StoreError::corrupt("role", &role_text))?,
        content: row.try_get(content)?,
        metadata,
        author_id: author
            .map(|a| UserId::parse(&a))
            .transpose()
            .map_err(|e| StoreError::corrupt("author_id", e))?,
        created_at: row.try_get(created_at)?,
        deleted_at: row.try_get(deleted_at)?,
        deleted_by: row.try_get(deleted_by)?,
    })
}

/// The list query (`prefix` is empty, or `EXPLAIN ` for plan checks): the access rule and the
/// keyset condition inside, ordered as the `conversations_list` index.
fn list_query<'a>(prefix: &str, query: &'a ConversationQuery) -> QueryBuilder<'a, Postgres> {
    let mut sql = QueryBuilder::<Postgres>::new(format!(
        "{prefix}SELECT {} FROM copilot.conversations WHERE tenant_id = ",
        conversation_columns!()
    ));
    crate::sql::push_list_filters(&mut sql, query);
    if let Some(cursor) = &query.after {
        sql.push(" AND (coalesce(last_message_at, created_at), id) < (")
            .push_bind(from_micros(cursor.last_activity_micros))
            .push(", ")
            .push_bind(*cursor.id.as_uuid())
            .push(")");
    }
    sql.push(" ORDER BY coalesce(last_message_at, created_at) DESC, id DESC LIMIT ")
        .push_bind(i64::from(query.limit) + 1);
    sql
}

impl PostgresStore {
    /// The plan PostgreSQL chooses for `list_conversations(query)` (`EXPLAIN` of the very SQL
    /// it runs), for tests and diagnostics.
    pub async fn explain_list(&self, query: &ConversationQuery) -> StoreResult<Vec<String>> {
        let mut sql = list_query("EXPLAIN ", query);
        let mut conn = self.read().await?;
        let plan: Vec<String> = sql
            .build_query_scalar()
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?;
        conn.finish().await?;
        Ok(plan)
    }
}

#[async_trait]
impl ConversationRows for PostgresStore {
    type Snapshot = WriteTx;

    async fn fetch_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        let mut conn = self.read().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM copilot.conversations WHERE id = $1 AND tenant_id = $2"
        ))
        .persistent(self.persistent())
        .bind(id.as_uuid())
        .bind(tenant.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        conn.finish().await?;
        row.as_ref().map(decode_conversation).transpose()
    }

    async fn fetch_conversations(
        &self,
        query: &ConversationQuery,
    ) -> StoreResult<Vec<Conversation>> {
        let mut sql = list_query("", query);
        let mut conn = self.read().await?;
        let rows = sql
            .build()
            .persistent(self.persistent())
            .fetch_all(&mut *conn)
            .await?;
        conn.finish().await?;
        rows.iter().map(decode_conversation).collect()
    }

    async fn fetch_message(&self, at: MessageAt<'_>) -> StoreResult<Option<Message>> {
        let mut conn = self.read().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM copilot.conversation_messages WHERE id = $1 AND conversation_id = $2 AND tenant_id = $3"
        ))
        .persistent(self.persistent())
        .bind(at.message.as_uuid())
        .bind(at.conversation.as_uuid())
        .bind(at.tenant.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        conn.finish().await?;
        row.as_ref().map(decode_message).transpose()
    }

    async fn insert_conversation(
        &self,
        tx: &mut WriteTx,
        new: &NewConversation,
        (id, version): (ConversationId, u64),
    ) -> StoreResult<Conversation> {
        let row = sqlx::query(concat!(
            "INSERT INTO copilot.conversations (id, tenant_id, user_id, title, persona_id, jurisdictions,
                 share_audience, tenant_access, created_at, updated_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) RETURNING ",
            conversation_columns!()
        ))
        .persistent(self.persistent())
        .bind(id.as_uuid())
        .bind(new.tenant_id.as_str())
        .bind(new.user_id.as_ref().map(UserId::as_str))
        .bind(new.title.as_deref())
        .bind(new.persona_id.as_deref())
        .bind(&new.jurisdictions)
        .bind(new.share_audience.as_str())
        .bind(new.tenant_access.as_str())
        .bind(self.now())
        .bind(to_i64(version)?)
        .fetch_one(&mut **tx)
        .await?;
        decode_conversation(&row)
    }

    async fn conversation_for_update(
        &self,
        tx: &mut WriteTx,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM copilot.conversations WHERE id = $1 AND tenant_id = $2 FOR UPDATE"
        ))
        .persistent(self.persistent())
        .bind(id.as_uuid())
        .bind(tenant.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(decode_conversation).transpose()
    }

    async fn write_conversation_update(
        &self,
        tx: &mut WriteTx,
        (id, version): (&ConversationId, u64),
        update: &ConversationUpdate,
    ) -> StoreResult<Conversation> {
        let mut sql =
            QueryBuilder::<Postgres>::new("UPDATE copilot.conversations SET updated_at = ");
        crate::sql::push_conversation_update(&mut sql, update, self.now(), to_i64(version)?);
        sql.push(" WHERE id = ").push_bind(*id.as_uuid());
        sql.push(concat!(" RETURNING ", conversation_columns!()));
        let row = sql
            .build()
            .persistent(self.persistent())
            .fetch_one(&mut **tx)
            .await?;
        decode_conversation(&row)
    }

    async fn append(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &NewMessage,
    ) -> StoreResult<MessageWrite> {
        // One autocommitted statement, one round trip: the UPDATE locks the conversation row,
        // so seq (last_seq + 1, re-read after any wait) is gapless and the version is taken
        // under the lock; createdAt never goes below the previous message's, so it follows seq.
        let now = self.now();
        let subject = ChangeSubject::Conversation(tenant.clone(), *conversation);
        let mut conn = self.write_statement().await?;
        let query = sqlx::query(concat!(
            "WITH upd AS (
                 UPDATE copilot.conversations
                    SET last_seq = last_seq + 1,
                        last_message_at = GREATEST($4::timestamptz, last_message_at),
                        updated_at = GREATEST($4::timestamptz, last_message_at),
                        message_count = message_count + 1,
                        version = nextval('copilot.version_seq')
                  WHERE id = $7 AND tenant_id = $8 AND archived_at IS NULL
                  RETURNING last_seq, ",
            conversation_columns!(),
            "), ins AS (
                 INSERT INTO copilot.conversation_messages
                     (id, conversation_id, tenant_id, seq, role, content, metadata, author_id, created_at)
                 SELECT $6, $7, $8, upd.last_seq, $9, $10, $11, $12, upd.last_message_at FROM upd
                 RETURNING ",
            message_columns!(),
            "), ",
            change_log_cte!("upd"),
            " SELECT upd.*, ",
            prefixed_message_columns!(),
            " FROM upd CROSS JOIN ins"
        ));
        let row = self
            .bind_change_log(query, &subject, now)
            .bind(MessageId::new_v7(now).as_uuid())
            .bind(conversation.as_uuid())
            .bind(tenant.as_str())
            .bind(message.role.as_str())
            .bind(&message.content)
            .bind(Json(&message.metadata))
            .bind(message.author_id.as_ref().map(UserId::as_str))
            .persistent(self.persistent())
            // Autocommit on a plain connection, or a transaction behind a pooler.
            .fetch_optional(&mut *conn)
            .await?;
        conn.finish().await?;
        let Some(row) = row else {
            // Nothing updated: the conversation is archived or is not there (rare; one more read).
            let mut conn = self.read().await?;
            let archived: Option<bool> = sqlx::query_scalar(
                "SELECT archived_at IS NOT NULL FROM copilot.conversations WHERE id = $1 AND tenant_id = $2",
            )
            .persistent(self.persistent())
            .bind(conversation.as_uuid())
            .bind(tenant.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            conn.finish().await?;
            return Err(match archived {
                Some(true) => StoreError::ConversationArchived,
                _ => StoreError::NotFound,
            });
        };
        let written = MessageWrite {
            message: decode_message_named(&row, &PREFIXED_MESSAGE_COLUMNS)?,
            conversation: decode_conversation(&row)?,
        };
        self.announce_committed(&subject, written.conversation.version);
        Ok(written)
    }

    async fn message_in(
        &self,
        tx: &mut WriteTx,
        at: MessageAt<'_>,
    ) -> StoreResult<Option<Message>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM copilot.conversation_messages WHERE id = $1 AND conversation_id = $2"
        ))
        .persistent(self.persistent())
        .bind(at.message.as_uuid())
        .bind(at.conversation.as_uuid())
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(decode_message).transpose()
    }

    async fn erase_message(
        &self,
        tx: &mut WriteTx,
        at: MessageAt<'_>,
        (deleted_by, version): (&str, u64),
    ) -> StoreResult<MessageWrite> {
        let now = self.now();
        let row = sqlx::query(concat!(
            "UPDATE copilot.conversation_messages SET content = NULL, metadata = '{}', deleted_at = $1,
                 deleted_by = $2 WHERE id = $3 RETURNING ",
            message_columns!()
        ))
        .persistent(self.persistent())
        .bind(now)
        .bind(deleted_by)
        .bind(at.message.as_uuid())
        .fetch_one(&mut **tx)
        .await?;
        let message = decode_message(&row)?;
        let row = sqlx::query(concat!(
            "UPDATE copilot.conversations SET message_count = greatest(message_count - 1, 0), updated_at = $1,
                 version = $2 WHERE id = $3 RETURNING ",
            conversation_columns!()
        ))
        .persistent(self.persistent())
        .bind(now)
        .bind(to_i64(version)?)
        .bind(at.conversation.as_uuid())
        .fetch_one(&mut **tx)
        .await?;
        let conversation = decode_conversation(&row)?;
        Ok(MessageWrite {
            message,
            conversation,
        })
    }

    /// `REPEATABLE READ, READ ONLY`: every statement of the page sees one snapshot.
    async fn begin_snapshot(&self) -> StoreResult<WriteTx> {
        let mut tx = self.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .persistent(self.persistent())
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn conversation_exists(
        &self,
        snapshot: &mut WriteTx,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<bool> {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM copilot.conversations WHERE id = $1 AND tenant_id = $2",
        )
        .persistent(self.persistent())
        .bind(id.as_uuid())
        .bind(tenant.as_str())
        .fetch_optional(&mut **snapshot)
        .await?;
        Ok(found.is_some())
    }

    async fn message_rows(
        &self,
        snapshot: &mut WriteTx,
        conversation: &ConversationId,
        query: &MessageQuery,
    ) -> StoreResult<Vec<Message>> {
        // Two fixed statements (not one built per call), so each stays a cached prepared one.
        let (sql, bound) = match query.after {
            Some(after) => (
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM copilot.conversation_messages WHERE conversation_id = $1 AND seq > $2
                      AND ($3 OR deleted_at IS NULL) ORDER BY seq ASC LIMIT $4"
                ),
                to_i64(after)?,
            ),
            None => (
                concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM copilot.conversation_messages WHERE conversation_id = $1 AND seq < $2
                      AND ($3 OR deleted_at IS NULL) ORDER BY seq DESC LIMIT $4"
                ),
                query.before.map_or(Ok(i64::MAX), to_i64)?,
            ),
        };
        let rows = sqlx::query(sql)
            .persistent(self.persistent())
            .bind(conversation.as_uuid())
            .bind(bound)
            .bind(query.include_deleted)
            .bind(i64::from(query.limit))
            .fetch_all(&mut **snapshot)
            .await?;
        rows.iter().map(decode_message).collect()
    }

    async fn has_older(
        &self,
        snapshot: &mut WriteTx,
        conversation: &ConversationId,
        (seq, include_deleted): (u64, bool),
    ) -> StoreResult<bool> {
        let older: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM copilot.conversation_messages WHERE conversation_id = $1 AND seq < $2
             AND ($3 OR deleted_at IS NULL) LIMIT 1",
        )
        .persistent(self.persistent())
        .bind(conversation.as_uuid())
        .bind(to_i64(seq)?)
        .bind(include_deleted)
        .fetch_optional(&mut **snapshot)
        .await?;
        Ok(older.is_some())
    }

    async fn end_snapshot(&self, snapshot: WriteTx) -> StoreResult<()> {
        snapshot.commit().await
    }
}
