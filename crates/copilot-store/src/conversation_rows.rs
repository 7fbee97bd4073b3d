//! The conversation store of every backend in this crate, written once (a blanket impl over the
//! backends' statements, as `versioned.rs` does for policies, config levels and memberships). Each backend
//! supplies its statements ([`ConversationRows`]); the steps and the rules live here: a write
//! locks the conversation first, `If-Match` is checked against the locked row, an archived
//! conversation takes no message change, deleting a deleted message changes nothing, and a
//! message page and its "older messages exist" come from one snapshot.

use async_trait::async_trait;
use copilot_domain::conversation::{
    Conversation, ConversationPage, ConversationQuery, ConversationUpdate, Message, MessagePage,
    MessageQuery, MessageWrite, NewConversation, NewMessage,
};
use copilot_domain::{ConversationId, MessageId, TenantId};

use crate::error::check_expected;
use crate::traits::ConversationStore;
use crate::versioned::{RowStatements, delete_versioned};
use crate::{ChangeSubject, StoreError, StoreResult};

/// A backend's statements over conversations and their messages.
#[async_trait]
pub(crate) trait ConversationRows: RowStatements {
    /// A read-only snapshot for the statements of one message page.
    type Snapshot: Send;

    async fn fetch_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>>;

    /// Up to `query.limit + 1` conversations in list order (the access rule and the cursor in
    /// the query), so the page knows whether there is a next one.
    async fn fetch_conversations(
        &self,
        query: &ConversationQuery,
    ) -> StoreResult<Vec<Conversation>>;

    async fn fetch_message(&self, at: MessageAt<'_>) -> StoreResult<Option<Message>>;

    /// Inserts the conversation `new` describes, with `id` and `version`.
    async fn insert_conversation(
        &self,
        tx: &mut Self::Tx,
        new: &NewConversation,
        (id, version): (ConversationId, u64),
    ) -> StoreResult<Conversation>;

    /// The conversation, locked for the rest of the transaction; `None` when there is none.
    async fn conversation_for_update(
        &self,
        tx: &mut Self::Tx,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>>;

    /// Applies `update` to the (locked) conversation at `version`.
    async fn write_conversation_update(
        &self,
        tx: &mut Self::Tx,
        (id, version): (&ConversationId, u64),
        update: &ConversationUpdate,
    ) -> StoreResult<Conversation>;

    /// The whole append: a backend makes it one statement where it can.
    async fn append(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &NewMessage,
    ) -> StoreResult<MessageWrite>;

    /// A message of the (locked) conversation.
    async fn message_in(
        &self,
        tx: &mut Self::Tx,
        at: MessageAt<'_>,
    ) -> StoreResult<Option<Message>>;

    /// Erases the message's content and metadata, counts it out of the conversation and moves
    /// the conversation to `version`.
    async fn erase_message(
        &self,
        tx: &mut Self::Tx,
        at: MessageAt<'_>,
        (deleted_by, version): (&str, u64),
    ) -> StoreResult<MessageWrite>;

    async fn begin_snapshot(&self) -> StoreResult<Self::Snapshot>;

    async fn conversation_exists(
        &self,
        snapshot: &mut Self::Snapshot,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<bool>;

    /// Up to `query.limit` messages from the cursor on (after: ascending; else descending).
    async fn message_rows(
        &self,
        snapshot: &mut Self::Snapshot,
        conversation: &ConversationId,
        query: &MessageQuery,
    ) -> StoreResult<Vec<Message>>;

    /// Whether a message (deleted ones only when `include_deleted`) precedes `seq`.
    async fn has_older(
        &self,
        snapshot: &mut Self::Snapshot,
        conversation: &ConversationId,
        (seq, include_deleted): (u64, bool),
    ) -> StoreResult<bool>;

    async fn end_snapshot(&self, snapshot: Self::Snapshot) -> StoreResult<()>;
}

/// Where a message is: its tenant, its conversation and its id.
#[derive(Clone, Copy)]
pub(crate) struct MessageAt<'a> {
    pub tenant: &'a TenantId,
    pub conversation: &'a ConversationId,
    pub message: &'a MessageId,
}

#[async_trait]
impl<S: ConversationRows> ConversationStore for S {
    async fn create_conversation(&self, new: &NewConversation) -> StoreResult<Conversation> {
        let id = ConversationId::new_v7(self.now());
        let subject = ChangeSubject::Conversation(new.tenant_id.clone(), id);
        let mut tx = self.begin_for(&subject).await?;
        let version = self.stamp_row(&mut tx, subject).await?;
        let conversation = self
            .insert_conversation(&mut tx, new, (id, version))
            .await?;
        self.commit(tx).await?;
        Ok(conversation)
    }

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        self.fetch_conversation(tenant, id).await
    }

    async fn list_conversations(&self, query: &ConversationQuery) -> StoreResult<ConversationPage> {
        let rows = self.fetch_conversations(query).await?;
        Ok(ConversationPage::from_rows(rows, query))
    }

    async fn update_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        update: &ConversationUpdate,
        expected_version: Option<u64>,
    ) -> StoreResult<Conversation> {
        let subject = ChangeSubject::Conversation(tenant.clone(), *id);
        let mut tx = self.begin_for(&subject).await?;
        let current = self
            .conversation_for_update(&mut tx, tenant, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        check_expected(Some(current.version), expected_version)?;
        let version = self.stamp_row(&mut tx, subject).await?;
        let updated = self
            .write_conversation_update(&mut tx, (id, version), update)
            .await?;
        self.commit(tx).await?;
        Ok(updated)
    }

    async fn delete_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        expected_version: Option<u64>,
    ) -> StoreResult<u64> {
        let subject = ChangeSubject::Conversation(tenant.clone(), *id);
        delete_versioned(self, subject, expected_version).await
    }

    async fn append_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &NewMessage,
    ) -> StoreResult<MessageWrite> {
        self.append(tenant, conversation, message).await
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &MessageId,
    ) -> StoreResult<Option<Message>> {
        let at = MessageAt {
            tenant,
            conversation,
            message,
        };
        self.fetch_message(at).await
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        query: &MessageQuery,
    ) -> StoreResult<MessagePage> {
        let mut snapshot = self.begin_snapshot().await?;
        if !self
            .conversation_exists(&mut snapshot, tenant, conversation)
            .await?
        {
            return Err(StoreError::NotFound);
        }
        let mut items = self
            .message_rows(&mut snapshot, conversation, query)
            .await?;
        items.sort_by_key(|m| m.seq);
        let next_before = match items.first() {
            Some(first) => {
                let cursor = (first.seq, query.include_deleted);
                let older = self.has_older(&mut snapshot, conversation, cursor).await?;
                older.then_some(first.seq)
            }
            None => None,
        };
        self.end_snapshot(snapshot).await?;
        Ok(MessagePage { items, next_before })
    }

    async fn soft_delete_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &MessageId,
        deleted_by: &str,
    ) -> StoreResult<MessageWrite> {
        let subject = ChangeSubject::Conversation(tenant.clone(), *conversation);
        let mut tx = self.begin_for(&subject).await?;
        let current = self
            .conversation_for_update(&mut tx, tenant, conversation)
            .await?
            .ok_or(StoreError::NotFound)?;
        if current.archived_at.is_some() {
            return Err(StoreError::ConversationArchived);
        }
        let at = MessageAt {
            tenant,
            conversation,
            message,
        };
        let existing = self
            .message_in(&mut tx, at)
            .await?
            .ok_or(StoreError::NotFound)?;
        if existing.is_deleted() {
            self.commit(tx).await?;
            return Ok(MessageWrite {
                message: existing,
                conversation: current,
            });
        }
        let version = self.stamp_row(&mut tx, subject).await?;
        let written = self
            .erase_message(&mut tx, at, (deleted_by, version))
            .await?;
        self.commit(tx).await?;
        Ok(written)
    }
}
