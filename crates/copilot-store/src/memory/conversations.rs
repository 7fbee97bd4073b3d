//! The memory backend's statements over conversations (`crate::conversation_rows`): the same
//! flows as SQLite and PostgreSQL decide the rules; here are only the reads and writes of the
//! maps. Writes, appends included, hold the writer lock (`rows.rs`); so does a message page's
//! snapshot, so its statements see no write in between.

use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::conversation::{
    Conversation, ConversationQuery, ConversationUpdate, Message, MessageQuery, MessageWrite,
    NewConversation, NewMessage,
};
use copilot_domain::{ConversationId, MessageId, TenantId};
use serde_json::Map;

use super::rows::MemoryTx;
use super::{ConversationRow, MemoryStore, State};
use crate::changes::ChangeSubject;
use crate::conversation_rows::{ConversationRows, MessageAt};
use crate::{StoreError, StoreResult};

impl State {
    /// The conversation `id` if it belongs to `tenant`.
    pub(super) fn conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> Option<&ConversationRow> {
        let row = self.conversations.get(id)?;
        (&row.conversation.tenant_id == tenant).then_some(row)
    }

    fn message(&self, at: MessageAt<'_>) -> Option<&Message> {
        let row = self.conversation(at.tenant, at.conversation)?;
        row.messages.iter().find(|m| &m.id == at.message)
    }
}

#[async_trait]
impl ConversationRows for MemoryStore {
    type Snapshot = tokio::sync::OwnedMutexGuard<()>;

    async fn fetch_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        let state = self.lock();
        Ok(state
            .conversation(tenant, id)
            .map(|r| r.conversation.clone()))
    }

    async fn fetch_conversations(
        &self,
        query: &ConversationQuery,
    ) -> StoreResult<Vec<Conversation>> {
        let state = self.lock();
        let mut rows: Vec<&Conversation> = state
            .conversations
            .values()
            .map(|r| &r.conversation)
            .filter(|c| {
                c.tenant_id == query.tenant_id
                    && query.viewer.can_see(c)
                    && c.matches_status(query.status)
                    && query.is_after_cursor(c)
            })
            .collect();
        rows.sort_by_key(|c| std::cmp::Reverse((c.last_activity_at(), c.id)));
        let page = rows.into_iter().take(query.limit as usize + 1);
        Ok(page.cloned().collect())
    }

    async fn fetch_message(&self, at: MessageAt<'_>) -> StoreResult<Option<Message>> {
        Ok(self.lock().message(at).cloned())
    }

    async fn insert_conversation(
        &self,
        tx: &mut MemoryTx,
        new: &NewConversation,
        (id, version): (ConversationId, u64),
    ) -> StoreResult<Conversation> {
        let now = self.clock.now();
        let conversation = Conversation {
            id,
            tenant_id: new.tenant_id.clone(),
            user_id: new.user_id.clone(),
            title: new.title.clone(),
            persona_id: new.persona_id.clone(),
            jurisdictions: new.jurisdictions.clone(),
            share_audience: new.share_audience,
            tenant_access: new.tenant_access,
            archived_at: None,
            created_at: now,
            updated_at: now,
            last_message_at: None,
            message_count: 0,
            version,
        };
        let stored = conversation.clone();
        tx.then(move |state| {
            let row = ConversationRow {
                conversation: stored,
                messages: Vec::new(),
            };
            state.conversations.insert(id, row);
        });
        Ok(conversation)
    }

    /// The writer lock, held since `begin_for`, already excludes every other writer.
    async fn conversation_for_update(
        &self,
        _: &mut MemoryTx,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        self.fetch_conversation(tenant, id).await
    }

    async fn write_conversation_update(
        &self,
        tx: &mut MemoryTx,
        (id, version): (&ConversationId, u64),
        update: &ConversationUpdate,
    ) -> StoreResult<Conversation> {
        let now = self.clock.now();
        let mut c = self
            .lock()
            .conversations
            .get(id)
            .map(|r| r.conversation.clone())
            .ok_or(StoreError::NotFound)?;
        if let Some(title) = &update.title {
            c.title = title.clone();
        }
        if let Some(audience) = update.share_audience {
            c.share_audience = audience;
        }
        if let Some(access) = update.tenant_access {
            c.tenant_access = access;
        }
        match update.archived {
            Some(true) if c.archived_at.is_none() => c.archived_at = Some(now),
            Some(false) => c.archived_at = None,
            _ => {}
        }
        c.updated_at = now;
        c.version = version;
        let (id, stored) = (*id, c.clone());
        tx.then(move |state| {
            if let Some(row) = state.conversations.get_mut(&id) {
                row.conversation = stored;
            }
        });
        Ok(c)
    }

    async fn append(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &NewMessage,
    ) -> StoreResult<MessageWrite> {
        let _writer = Arc::clone(&self.writer).lock_owned().await;
        let mut state = self.lock();
        // The clock under the lock: createdAt follows seq.
        let now = self.clock.now();
        let archived = state
            .conversation(tenant, conversation)
            .ok_or(StoreError::NotFound)?
            .conversation
            .is_archived();
        if archived {
            return Err(StoreError::ConversationArchived);
        }
        let subject = ChangeSubject::Conversation(tenant.clone(), *conversation);
        let version = state.stamp(subject, now);
        let row = state
            .conversations
            .get_mut(conversation)
            .ok_or(StoreError::NotFound)?;
        let stored = Message {
            id: MessageId::new_v7(now),
            conversation_id: *conversation,
            seq: row.messages.len() as u64 + 1,
            role: message.role,
            content: Some(message.content.clone()),
            metadata: message.metadata.clone(),
            author_id: message.author_id.clone(),
            created_at: now,
            deleted_at: None,
            deleted_by: None,
        };
        row.messages.push(stored.clone());
        let c = &mut row.conversation;
        c.last_message_at = Some(now);
        c.updated_at = now;
        c.message_count += 1;
        c.version = version;
        Ok(MessageWrite {
            message: stored,
            conversation: c.clone(),
        })
    }

    async fn message_in(
        &self,
        _: &mut MemoryTx,
        at: MessageAt<'_>,
    ) -> StoreResult<Option<Message>> {
        self.fetch_message(at).await
    }

    async fn erase_message(
        &self,
        tx: &mut MemoryTx,
        at: MessageAt<'_>,
        (deleted_by, version): (&str, u64),
    ) -> StoreResult<MessageWrite> {
        let now = self.clock.now();
        let (mut message, mut conversation) = {
            let state = self.lock();
            let row = state
                .conversation(at.tenant, at.conversation)
                .ok_or(StoreError::NotFound)?;
            let message = state.message(at).ok_or(StoreError::NotFound)?;
            (message.clone(), row.conversation.clone())
        };
        message.content = None;
        message.metadata = Map::new();
        message.deleted_at = Some(now);
        message.deleted_by = Some(deleted_by.to_owned());
        conversation.message_count = conversation.message_count.saturating_sub(1);
        conversation.updated_at = now;
        conversation.version = version;
        let written = MessageWrite {
            message,
            conversation,
        };
        let stored = written.clone();
        tx.then(move |state| {
            let id = stored.conversation.id;
            if let Some(row) = state.conversations.get_mut(&id) {
                let seq = stored.message.seq;
                if let Some(m) = row.messages.iter_mut().find(|m| m.seq == seq) {
                    *m = stored.message;
                }
                row.conversation = stored.conversation;
            }
        });
        Ok(written)
    }

    async fn begin_snapshot(&self) -> StoreResult<Self::Snapshot> {
        Ok(Arc::clone(&self.writer).lock_owned().await)
    }

    async fn conversation_exists(
        &self,
        _: &mut Self::Snapshot,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<bool> {
        Ok(self.lock().conversation(tenant, id).is_some())
    }

    async fn message_rows(
        &self,
        _: &mut Self::Snapshot,
        conversation: &ConversationId,
        query: &MessageQuery,
    ) -> StoreResult<Vec<Message>> {
        let state = self.lock();
        let Some(row) = state.conversations.get(conversation) else {
            return Ok(Vec::new());
        };
        let visible = row
            .messages
            .iter()
            .filter(|m| query.include_deleted || !m.is_deleted());
        let limit = query.limit as usize;
        Ok(match query.after {
            Some(after) => visible
                .filter(|m| m.seq > after)
                .take(limit)
                .cloned()
                .collect(),
            None => {
                let before = query.before.unwrap_or(u64::MAX);
                let older = visible.filter(|m| m.seq < before).rev();
                older.take(limit).cloned().collect()
            }
        })
    }

    async fn has_older(
        &self,
        _: &mut Self::Snapshot,
        conversation: &ConversationId,
        (seq, include_deleted): (u64, bool),
    ) -> StoreResult<bool> {
        let state = self.lock();
        let messages = state.conversations.get(conversation).map(|r| &r.messages);
        Ok(messages
            .into_iter()
            .flatten()
            .any(|m| m.seq < seq && (include_deleted || !m.is_deleted())))
    }

    async fn end_snapshot(&self, _: Self::Snapshot) -> StoreResult<()> {
        Ok(())
    }
}
