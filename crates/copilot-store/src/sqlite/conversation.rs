use async_trait::async_trait;
use copilot_domain::clock::from_micros;
use copilot_domain::conversation::{
    Conversation, ConversationQuery, ConversationUpdate, Message, MessageQuery, MessageRole,
    MessageWrite, NewConversation, NewMessage, ShareAudience, TenantAccess,
};
use copilot_domain::{ConversationId, MessageId, TenantId, UserId};
use serde_json::Map;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, Transaction};

use super::{SqliteStore, micros, opt_time, to_u64, version_param};
use crate::conversation_rows::{ConversationRows, MessageAt};
use crate::{ChangeSubject, StoreError, StoreResult};

const CONVERSATION_COLUMNS: &str = "id, tenant_id, user_id, title, persona_id, jurisdictions, share_audience, \
     tenant_access, archived_at, created_at, updated_at, last_message_at, message_count, version";

const MESSAGE_COLUMNS: &str = "id, conversation_id, seq, role, content, metadata, author_id, created_at, deleted_at, deleted_by";

fn decode_conversation(row: &SqliteRow) -> StoreResult<Conversation> {
    let id: String = row.try_get("id")?;
    let tenant: String = row.try_get("tenant_id")?;
    let user: Option<String> = row.try_get("user_id")?;
    let jurisdictions: String = row.try_get("jurisdictions")?;
    let audience: String = row.try_get("share_audience")?;
    let access: String = row.try_get("tenant_access")?;
    Ok(Conversation {
        id: ConversationId::parse(&id).map_err(|e| StoreError::corrupt("conversation id", e))?,
        tenant_id: TenantId::parse(&tenant).map_err(|e| StoreError::corrupt("tenant_id", e))?,
        user_id: user
            .map(|u| UserId::parse(&u))
            .transpose()
            .map_err(|e| StoreError::corrupt("user_id", e))?,
        title: row.try_get("title")?,
        persona_id: row.try_get("persona_id")?,
        jurisdictions: serde_json::from_str(&jurisdictions)
            .map_err(|e| StoreError::corrupt("jurisdictions", e))?,
        share_audience: ShareAudience::parse(&audience)
            .ok_or_else(|| StoreError::corrupt("share_audience", &audience))?,
        tenant_access: TenantAccess::parse(&access)
            .ok_or_else(|| StoreError::corrupt("tenant_access", &access))?,
        archived_at: opt_time(row.try_get("archived_at")?),
        created_at: from_micros(row.try_get("created_at")?),
        updated_at: from_micros(row.try_get("updated_at")?),
        last_message_at: opt_time(row.try_get("last_message_at")?),
        message_count: to_u64(row.try_get("message_count")?, "message_count")?,
        version: to_u64(row.try_get("version")?, "version")?,
    })
}

fn decode_message(row: &SqliteRow) -> StoreResult<Message> {
    let id: String = row.try_get("id")?;
    let conversation: String = row.try_get("conversation_id")?;
    let role: String = row.try_get("role")?;
    let metadata: String = row.try_get("metadata")?;
    let author: Option<String> = row.try_get("author_id")?;
    Ok(Message {
        id: MessageId::parse(&id).map_err(|e| StoreError::corrupt("message id", e))?,
        conversation_id: ConversationId::parse(&conversation)
            .map_err(|e| StoreError::corrupt("conversation id", e))?,
        seq: to_u64(row.try_get("seq")?, "seq")?,
        role: MessageRole::parse(&role).ok_or_else(|| StoreError::corrupt("role", &role))?,
        content: row.try_get("content")?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::corrupt("metadata", e))?,
        author_id: author
            .map(|a| UserId::parse(&a))
            .transpose()
            .map_err(|e| StoreError::corrupt("author_id", e))?,
        created_at: from_micros(row.try_get("created_at")?),
        deleted_at: opt_time(row.try_get("deleted_at")?),
        deleted_by: row.try_get("deleted_by")?,
    })
}

fn json_text<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(e.to_string()))
}

/// The conversation's version and archive state, locked by the surrounding write transaction.
async fn current_state(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    id: &ConversationId,
) -> StoreResult<(u64, bool, i64)> {
    let row = sqlx::query(
        "SELECT version, archived_at, last_seq FROM conversations WHERE id = ? AND tenant_id = ?",
    )
    .bind(id.to_string())
    .bind(tenant.as_str())
    .fetch_optional(conn)
    .await?
    .ok_or(StoreError::NotFound)?;
    let archived: Option<i64> = row.try_get("archived_at")?;
    Ok((
        to_u64(row.try_get("version")?, "version")?,
        archived.is_some(),
        row.try_get("last_seq")?,
    ))
}

/// The columns of a message row read through the `m` alias.
fn message_columns_of_m() -> String {
    format!("m.{}", MESSAGE_COLUMNS.replace(", ", ", m."))
}

/// ` AND deleted_at IS NULL` unless deleted messages are wanted.
fn visible(include_deleted: bool) -> &'static str {
    if include_deleted {
        ""
    } else {
        " AND deleted_at IS NULL"
    }
}

#[async_trait]
impl ConversationRows for SqliteStore {
    type Snapshot = Transaction<'static, Sqlite>;

    async fn fetch_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        let row = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ? AND tenant_id = ?"
        ))
        .bind(id.to_string())
        .bind(tenant.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(decode_conversation).transpose()
    }

    async fn fetch_conversations(
        &self,
        query: &ConversationQuery,
    ) -> StoreResult<Vec<Conversation>> {
        let mut sql = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE tenant_id = "
        ));
        crate::sql::push_list_filters(&mut sql, query);
        if let Some(cursor) = &query.after {
            sql.push(" AND (last_activity_at, id) < (")
                .push_bind(cursor.last_activity_micros)
                .push(", ")
                .push_bind(cursor.id.to_string())
                .push(")");
        }
        sql.push(" ORDER BY last_activity_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(query.limit) + 1);
        let rows = sql.build().fetch_all(&self.reader).await?;
        rows.iter().map(decode_conversation).collect()
    }

    async fn fetch_message(&self, at: MessageAt<'_>) -> StoreResult<Option<Message>> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM conversation_messages m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.id = ? AND m.conversation_id = ? AND c.tenant_id = ?",
            message_columns_of_m()
        ))
        .bind(at.message.to_string())
        .bind(at.conversation.to_string())
        .bind(at.tenant.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(decode_message).transpose()
    }

    async fn insert_conversation(
        &self,
        tx: &mut Self::Tx,
        new: &NewConversation,
        (id, version): (ConversationId, u64),
    ) -> StoreResult<Conversation> {
        let now = micros(self.now());
        let row = sqlx::query(&format!(
            "INSERT INTO conversations (id, tenant_id, user_id, title, persona_id, jurisdictions, share_audience,
                 tenant_access, archived_at, created_at, updated_at, last_message_at, last_activity_at,
                 message_count, last_seq, version)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, NULL, ?, 0, 0, ?)
             RETURNING {CONVERSATION_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(new.tenant_id.as_str())
        .bind(new.user_id.as_ref().map(UserId::as_str))
        .bind(new.title.as_deref())
        .bind(new.persona_id.as_deref())
        .bind(json_text(&new.jurisdictions)?)
        .bind(new.share_audience.as_str())
        .bind(new.tenant_access.as_str())
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(version_param(version)?)
        .fetch_one(&mut **tx)
        .await?;
        decode_conversation(&row)
    }

    /// The database write lock (`BEGIN IMMEDIATE`) already excludes every other writer.
    async fn conversation_for_update(
        &self,
        tx: &mut Self::Tx,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        let row = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ? AND tenant_id = ?"
        ))
        .bind(id.to_string())
        .bind(tenant.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(decode_conversation).transpose()
    }

    async fn write_conversation_update(
        &self,
        tx: &mut Self::Tx,
        (id, version): (&ConversationId, u64),
        update: &ConversationUpdate,
    ) -> StoreResult<Conversation> {
        let now = micros(self.now());
        let mut sql = QueryBuilder::<Sqlite>::new("UPDATE conversations SET updated_at = ");
        crate::sql::push_conversation_update(&mut sql, update, now, version_param(version)?);
        sql.push(" WHERE id = ").push_bind(id.to_string());
        sql.push(format!(" RETURNING {CONVERSATION_COLUMNS}"));
        let row = sql.build().fetch_one(&mut **tx).await?;
        decode_conversation(&row)
    }

    async fn append(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &NewMessage,
    ) -> StoreResult<MessageWrite> {
        let metadata = json_text(&message.metadata)?;
        let mut tx = self.begin_write().await?;
        // Read the clock holding the write lock, so createdAt follows seq.
        let now = self.now();
        let (_, archived, last_seq) = current_state(&mut tx, tenant, conversation).await?;
        if archived {
            return Err(StoreError::ConversationArchived);
        }
        let version = self
            .stamp(
                &mut tx,
                ChangeSubject::Conversation(tenant.clone(), *conversation),
            )
            .await?;
        let seq = last_seq + 1;
        let row = sqlx::query(&format!(
            "INSERT INTO conversation_messages (id, conversation_id, seq, role, content, metadata, author_id, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind(MessageId::new_v7(now).to_string())
        .bind(conversation.to_string())
        .bind(seq)
        .bind(message.role.as_str())
        .bind(&message.content)
        .bind(&metadata)
        .bind(message.author_id.as_ref().map(UserId::as_str))
        .bind(micros(now))
        .fetch_one(&mut *tx)
        .await?;
        let stored = decode_message(&row)?;
        let row = sqlx::query(&format!(
            "UPDATE conversations SET last_seq = ?, last_message_at = ?, last_activity_at = ?, updated_at = ?,
                 message_count = message_count + 1, version = ?
             WHERE id = ? RETURNING {CONVERSATION_COLUMNS}"
        ))
        .bind(seq)
        .bind(micros(now))
        .bind(micros(now))
        .bind(micros(now))
        .bind(version_param(version)?)
        .bind(conversation.to_string())
        .fetch_one(&mut *tx)
        .await?;
        let updated = decode_conversation(&row)?;
        tx.commit().await?;
        Ok(MessageWrite {
            message: stored,
            conversation: updated,
        })
    }

    async fn message_in(
        &self,
        tx: &mut Self::Tx,
        at: MessageAt<'_>,
    ) -> StoreResult<Option<Message>> {
        let row = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM conversation_messages WHERE id = ? AND conversation_id = ?"
        ))
        .bind(at.message.to_string())
        .bind(at.conversation.to_string())
        .fetch_optional(&mut **tx)
        .await?;
        row.as_ref().map(decode_message).transpose()
    }

    async fn erase_message(
        &self,
        tx: &mut Self::Tx,
        at: MessageAt<'_>,
        (deleted_by, version): (&str, u64),
    ) -> StoreResult<MessageWrite> {
        let now = micros(self.now());
        let row = sqlx::query(&format!(
            "UPDATE conversation_messages SET content = NULL, metadata = ?, deleted_at = ?, deleted_by = ?
             WHERE id = ? RETURNING {MESSAGE_COLUMNS}"
        ))
        .bind(json_text(&Map::new())?)
        .bind(now)
        .bind(deleted_by)
        .bind(at.message.to_string())
        .fetch_one(&mut **tx)
        .await?;
        let message = decode_message(&row)?;
        let row = sqlx::query(&format!(
            "UPDATE conversations SET message_count = max(message_count - 1, 0), updated_at = ?, version = ?
             WHERE id = ? RETURNING {CONVERSATION_COLUMNS}"
        ))
        .bind(now)
        .bind(version_param(version)?)
        .bind(at.conversation.to_string())
        .fetch_one(&mut **tx)
        .await?;
        let conversation = decode_conversation(&row)?;
        Ok(MessageWrite {
            message,
            conversation,
        })
    }

    async fn begin_snapshot(&self) -> StoreResult<Self::Snapshot> {
        Ok(self.reader.begin().await?)
    }

    async fn conversation_exists(
        &self,
        snapshot: &mut Self::Snapshot,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM conversations WHERE id = ? AND tenant_id = ?")
                .bind(id.to_string())
                .bind(tenant.as_str())
                .fetch_optional(&mut **snapshot)
                .await?;
        Ok(found.is_some())
    }

    async fn message_rows(
        &self,
        snapshot: &mut Self::Snapshot,
        conversation: &ConversationId,
        query: &MessageQuery,
    ) -> StoreResult<Vec<Message>> {
        let (condition, order, bound) = match query.after {
            Some(after) => ("seq > ?", "ASC", version_param(after)?),
            None => (
                "seq < ?",
                "DESC",
                query.before.map_or(Ok(i64::MAX), version_param)?,
            ),
        };
        let rows = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM conversation_messages
             WHERE conversation_id = ? AND {condition}{} ORDER BY seq {order} LIMIT ?",
            visible(query.include_deleted)
        ))
        .bind(conversation.to_string())
        .bind(bound)
        .bind(i64::from(query.limit))
        .fetch_all(&mut **snapshot)
        .await?;
        rows.iter().map(decode_message).collect()
    }

    async fn has_older(
        &self,
        snapshot: &mut Self::Snapshot,
        conversation: &ConversationId,
        (seq, include_deleted): (u64, bool),
    ) -> StoreResult<bool> {
        let older: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT 1 FROM conversation_messages WHERE conversation_id = ? AND seq < ?{} LIMIT 1",
            visible(include_deleted)
        ))
        .bind(conversation.to_string())
        .bind(version_param(seq)?)
        .fetch_optional(&mut **snapshot)
        .await?;
        Ok(older.is_some())
    }

    async fn end_snapshot(&self, snapshot: Self::Snapshot) -> StoreResult<()> {
        Ok(snapshot.commit().await?)
    }
}
