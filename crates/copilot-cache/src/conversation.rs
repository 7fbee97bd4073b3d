//! The caching decorator of [`ConversationStore`] (opt-in: `ENABLE_CONVERSATION_CACHING`).
//! It caches conversation *records* by `(tenant, id)`, never an answer for a caller: the access
//! rule runs above it on every read, hit or miss (DESIGN.md section 9, item 1). Lists and
//! messages are read from the store.

use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::conversation::{
    Conversation, ConversationPage, ConversationQuery, ConversationUpdate, Message, MessagePage,
    MessageQuery, MessageWrite, NewConversation, NewMessage,
};
use copilot_domain::{ConversationId, MessageId, TenantId};
use copilot_store::{ConversationStore, StoreResult};

use crate::tier::CacheTier;

pub struct CachedConversationStore {
    inner: Arc<dyn ConversationStore>,
    tier: Arc<CacheTier<Conversation>>,
}

impl CachedConversationStore {
    pub fn new(inner: Arc<dyn ConversationStore>, tier: CacheTier<Conversation>) -> Self {
        Self {
            inner,
            tier: Arc::new(tier),
        }
    }

    pub fn tier(&self) -> &CacheTier<Conversation> {
        &self.tier
    }

    fn key(&self, tenant: &TenantId, id: &ConversationId) -> String {
        crate::keys::conversation(&self.tier.settings().prefix, tenant, id)
    }

    /// After a write that produced `conversation`: tombstone, then the new record.
    async fn written(&self, conversation: &Conversation) {
        let key = self.key(&conversation.tenant_id, &conversation.id);
        self.tier
            .write_through(&key, conversation.version, conversation.clone())
            .await;
    }
}

#[async_trait]
impl ConversationStore for CachedConversationStore {
    async fn create_conversation(&self, new: &NewConversation) -> StoreResult<Conversation> {
        let created = self.inner.create_conversation(new).await?;
        self.written(&created).await;
        Ok(created)
    }

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>> {
        let found = self
            .tier
            .get(&self.key(tenant, id), || async {
                Ok(self
                    .inner
                    .get_conversation(tenant, id)
                    .await?
                    .map(|c| (c.version, c)))
            })
            .await?;
        Ok(found.map(|c| c.as_ref().clone()))
    }

    async fn list_conversations(&self, query: &ConversationQuery) -> StoreResult<ConversationPage> {
        self.inner.list_conversations(query).await
    }

    async fn update_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        update: &ConversationUpdate,
        expected_version: Option<u64>,
    ) -> StoreResult<Conversation> {
        let updated = self
            .inner
            .update_conversation(tenant, id, update, expected_version)
            .await?;
        self.written(&updated).await;
        Ok(updated)
    }

    async fn delete_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        expected_version: Option<u64>,
    ) -> StoreResult<u64> {
        let version = self
            .inner
            .delete_conversation(tenant, id, expected_version)
            .await?;
        self.tier.invalidate(&self.key(tenant, id), version).await;
        Ok(version)
    }

    async fn append_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &NewMessage,
    ) -> StoreResult<MessageWrite> {
        let written = self
            .inner
            .append_message(tenant, conversation, message)
            .await?;
        self.written(&written.conversation).await;
        Ok(written)
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &MessageId,
    ) -> StoreResult<Option<Message>> {
        self.inner.get_message(tenant, conversation, message).await
    }

    async fn list_messages(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        query: &MessageQuery,
    ) -> StoreResult<MessagePage> {
        self.inner.list_messages(tenant, conversation, query).await
    }

    async fn soft_delete_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &MessageId,
        deleted_by: &str,
    ) -> StoreResult<MessageWrite> {
        let written = self
            .inner
            .soft_delete_message(tenant, conversation, message, deleted_by)
            .await?;
        self.written(&written.conversation).await;
        Ok(written)
    }
}
