//! The in-memory backend: for tests and for library users who want no database. All state sits
//! behind one `std::sync::Mutex` that is never held across an `.await`. Policies, config levels
//! and memberships go through the same write flows as the SQL backends (`rows.rs`).

mod rows;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use copilot_domain::config::{ConfigLevel, StoredPatch};
use copilot_domain::conversation::{
    Conversation, ConversationPage, ConversationQuery, ConversationUpdate, Message, MessagePage,
    MessageQuery, MessageWrite, NewConversation, NewMessage,
};
use copilot_domain::membership::Membership;
use copilot_domain::policy::StoredPolicy;
use copilot_domain::{Clock, ConversationId, MessageId, SystemClock, TenantId, UserId};
use serde_json::Map;

use crate::changes::{Change, ChangeLog, ChangeSubject};
use crate::error::check_expected;
use crate::traits::{ConversationStore, StoreHealth};
use crate::{StoreError, StoreResult};

pub struct MemoryStore {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    /// Held by a policy, config or membership write from its start to its commit (`rows.rs`),
    /// so writers of those rows go one after the other, as in the SQL backends.
    writer: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct State {
    last_version: u64,
    /// Whether writes are recorded in `changes` (the change log).
    record_changes: bool,
    changes: Vec<Change>,
    last_change: i64,
    policies: HashMap<TenantId, StoredPolicy>,
    configs: HashMap<ConfigLevel, StoredPatch>,
    conversations: HashMap<ConversationId, ConversationRow>,
    members: BTreeMap<(TenantId, UserId), Membership>,
}

struct ConversationRow {
    conversation: Conversation,
    /// Messages in `seq` order: `messages[i].seq == i + 1`.
    messages: Vec<Message>,
}

impl State {
    fn next_version(&mut self) -> u64 {
        self.last_version += 1;
        self.last_version
    }

    /// A fresh version for a write to `subject`, recorded in the change log when asked to.
    fn stamp(&mut self, subject: ChangeSubject, at: copilot_domain::Timestamp) -> u64 {
        let version = self.next_version();
        self.record_change(subject, version, at);
        version
    }

    fn conversation_mut(
        &mut self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<&mut ConversationRow> {
        match self.conversations.get_mut(id) {
            Some(row) if &row.conversation.tenant_id == tenant => Ok(row),
            _ => Err(StoreError::NotFound),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            state: Mutex::new(State::default()),
            clock,
            writer: Arc::default(),
        }
    }

    /// Records every write in the change log (for a cache that drains it).
    pub fn recording_changes(self) -> Self {
        self.lock().record_changes = true;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write: every method
        // validates before it mutates, so the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ConversationStore for MemoryStore {
    async fn create_conversation(&self, new: &NewConversation) -> StoreResult<Conversation> {
        let mut state = self.lock();
        let now = self.clock.now();
        let id = ConversationId::new_v7(now);
        let version = state.stamp(ChangeSubject::Conversation(new.tenant_id.clone(), id), now);
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
        state.conversations.insert(
            conversation.id,
            ConversationRow {
                conversation: conversation.clone(),
                messages: Vec::new(),
            },
        );
        Ok(conversation)
    }

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        let state = self.lock();
        Ok(state
            .conversations
            .get(id)
            .map(|r| &r.conversation)
            .filter(|c| &c.tenant_id == tenant)
            .cloned())
    }

    async fn list_conversations(&self, query: &ConversationQuery) -> StoreResult<ConversationPage> {
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
        let rows = rows
            .into_iter()
            .take(query.limit as usize + 1)
            .cloned()
            .collect();
        Ok(ConversationPage::from_rows(rows, query))
    }

    async fn update_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        update: &ConversationUpdate,
        expected_version: Option<u64>,
    ) -> StoreResult<Conversation> {
        let mut state = self.lock();
        let now = self.clock.now();
        let current = state.conversation_mut(tenant, id)?.conversation.version;
        check_expected(Some(current), expected_version)?;
        let version = state.stamp(
            ChangeSubject::Conversation(tenant.clone(), *id),
            self.clock.now(),
        );
        let c = &mut state.conversation_mut(tenant, id)?.conversation;
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
        Ok(c.clone())
    }

    async fn delete_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        expected_version: Option<u64>,
    ) -> StoreResult<u64> {
        let mut state = self.lock();
        let current = state.conversation_mut(tenant, id)?.conversation.version;
        check_expected(Some(current), expected_version)?;
        state.conversations.remove(id);
        Ok(state.stamp(
            ChangeSubject::Conversation(tenant.clone(), *id),
            self.clock.now(),
        ))
    }

    async fn append_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &NewMessage,
    ) -> StoreResult<MessageWrite> {
        let mut state = self.lock();
        // The clock under the lock: createdAt follows seq.
        let now = self.clock.now();
        if state
            .conversation_mut(tenant, conversation)?
            .conversation
            .is_archived()
        {
            return Err(StoreError::ConversationArchived);
        }
        let version = state.stamp(
            ChangeSubject::Conversation(tenant.clone(), *conversation),
            self.clock.now(),
        );
        let row = state.conversation_mut(tenant, conversation)?;
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

    async fn get_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &MessageId,
    ) -> StoreResult<Option<Message>> {
        let mut state = self.lock();
        let row = match state.conversation_mut(tenant, conversation) {
            Ok(row) => row,
            Err(StoreError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(row.messages.iter().find(|m| &m.id == message).cloned())
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        query: &MessageQuery,
    ) -> StoreResult<MessagePage> {
        let mut state = self.lock();
        let row = state.conversation_mut(tenant, conversation)?;
        let visible: Vec<&Message> = row
            .messages
            .iter()
            .filter(|m| query.include_deleted || !m.is_deleted())
            .collect();
        let items: Vec<Message> = match query.after {
            Some(after) => visible
                .iter()
                .filter(|m| m.seq > after)
                .take(query.limit as usize)
                .map(|m| (*m).clone())
                .collect(),
            None => {
                let before = query.before.unwrap_or(u64::MAX);
                let older: Vec<&&Message> = visible.iter().filter(|m| m.seq < before).collect();
                let skip = older.len().saturating_sub(query.limit as usize);
                older.into_iter().skip(skip).map(|m| (*m).clone()).collect()
            }
        };
        let next_before = items
            .first()
            .map(|first| first.seq)
            .filter(|&first| visible.iter().any(|m| m.seq < first));
        Ok(MessagePage { items, next_before })
    }

    async fn soft_delete_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &MessageId,
        deleted_by: &str,
    ) -> StoreResult<MessageWrite> {
        let mut state = self.lock();
        let now = self.clock.now();
        let row = state.conversation_mut(tenant, conversation)?;
        if row.conversation.is_archived() {
            return Err(StoreError::ConversationArchived);
        }
        let index = row
            .messages
            .iter()
            .position(|m| &m.id == message)
            .ok_or(StoreError::NotFound)?;
        if row.messages[index].is_deleted() {
            return Ok(MessageWrite {
                message: row.messages[index].clone(),
                conversation: row.conversation.clone(),
            });
        }
        let version = state.stamp(
            ChangeSubject::Conversation(tenant.clone(), *conversation),
            self.clock.now(),
        );
        let row = state.conversation_mut(tenant, conversation)?;
        let m = &mut row.messages[index];
        m.content = None;
        m.metadata = Map::new();
        m.deleted_at = Some(now);
        m.deleted_by = Some(deleted_by.to_owned());
        let message = m.clone();
        let c = &mut row.conversation;
        c.message_count = c.message_count.saturating_sub(1);
        c.updated_at = now;
        c.version = version;
        Ok(MessageWrite {
            message,
            conversation: c.clone(),
        })
    }
}

#[async_trait]
impl StoreHealth for MemoryStore {
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[async_trait]
impl ChangeLog for MemoryStore {
    async fn changes_before(
        &self,
        before: copilot_domain::Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Change>> {
        Ok(self
            .lock()
            .changes
            .iter()
            .filter(|c| c.at < before)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn forget_changes(&self, ids: &[i64]) -> StoreResult<()> {
        self.lock().changes.retain(|c| !ids.contains(&c.id));
        Ok(())
    }
}
