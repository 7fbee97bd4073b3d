//! The store traits (DESIGN.md 4.1). Object-safe through `async_trait`, so the server, the
//! caching decorators and library users all hold `Arc<dyn ...>` and wrap any backend the same way.

use std::sync::Arc;

use async_trait::async_trait;
use copilot_domain::config::{
    ConfigLevel, ConfigPatch, EffectiveConfig, StoredPatch, effective_config,
};
use copilot_domain::conversation::{
    Conversation, ConversationPage, ConversationQuery, ConversationUpdate, Message, MessagePage,
    MessageQuery, MessageWrite, NewConversation, NewMessage,
};
use copilot_domain::membership::{Membership, MembershipInput};
use copilot_domain::policy::{StoredPolicy, TenantLlmPolicy};
use copilot_domain::{ConversationId, MessageId, TenantId, UserId};

use crate::{ChangeFeed, ChangeLog, StoreResult};

/// Every write takes a fresh `version` from one monotonic source per database, deletes
/// included, so versions never repeat, even after a delete and re-create (the cache relies on it).
#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// Shared, not copied: a cache hands out the row it holds.
    async fn get_policy(&self, tenant: &TenantId) -> StoreResult<Option<Arc<StoredPolicy>>>;

    /// Creates or replaces the tenant's policy. With `expected_version`, refuses
    /// (`VersionConflict`) unless the stored policy has exactly that version.
    async fn put_policy(
        &self,
        policy: &TenantLlmPolicy,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPolicy>;

    /// Deletes the policy; returns the fresh version the delete took (`NotFound` if none).
    async fn delete_policy(
        &self,
        tenant: &TenantId,
        expected_version: Option<u64>,
    ) -> StoreResult<u64>;
}

#[async_trait]
pub trait ConfigStore: Send + Sync {
    async fn get_patch(&self, level: &ConfigLevel) -> StoreResult<Option<StoredPatch>>;

    /// Replaces a level's patch (creating the level if needed).
    async fn put_patch(
        &self,
        level: &ConfigLevel,
        patch: &ConfigPatch,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPatch>;

    /// Applies a JSON merge patch (RFC 7396) to a level's patch atomically; creates the level
    /// when it has no patch. Invalid fields are `StoreError::Invalid`.
    async fn merge_patch(
        &self,
        level: &ConfigLevel,
        merge_patch: &serde_json::Value,
        expected_version: Option<u64>,
        actor: &str,
    ) -> StoreResult<StoredPatch>;

    /// Removes a level's patch; returns the fresh version the delete took.
    async fn delete_patch(
        &self,
        level: &ConfigLevel,
        expected_version: Option<u64>,
    ) -> StoreResult<u64>;

    /// The merged configuration of `user` in `tenant` (or of the tenant alone).
    async fn get_effective(
        &self,
        tenant: &TenantId,
        user: Option<&UserId>,
    ) -> StoreResult<Arc<EffectiveConfig>> {
        let global = self.get_patch(&ConfigLevel::Global).await?;
        let tenant_patch = self.get_patch(&ConfigLevel::Tenant(tenant.clone())).await?;
        let user_patch = match user {
            Some(u) => {
                self.get_patch(&ConfigLevel::User(tenant.clone(), u.clone()))
                    .await?
            }
            None => None,
        };
        Ok(Arc::new(effective_config(
            tenant,
            user,
            global.as_ref(),
            tenant_patch.as_ref(),
            user_patch.as_ref(),
        )))
    }
}

#[async_trait]
pub trait ConversationStore: Send + Sync {
    async fn create_conversation(&self, new: &NewConversation) -> StoreResult<Conversation>;

    async fn get_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
    ) -> StoreResult<Option<Conversation>>;

    /// One page in `(lastActivityAt, id)` descending order, the access rule inside the query.
    async fn list_conversations(&self, query: &ConversationQuery) -> StoreResult<ConversationPage>;

    /// Title, sharing and archive state in one atomic update.
    async fn update_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        update: &ConversationUpdate,
        expected_version: Option<u64>,
    ) -> StoreResult<Conversation>;

    /// Hard-deletes the conversation and its messages; returns the version the delete took.
    async fn delete_conversation(
        &self,
        tenant: &TenantId,
        id: &ConversationId,
        expected_version: Option<u64>,
    ) -> StoreResult<u64>;

    /// Appends with the next gapless `seq`, moving `lastMessageAt`, `updatedAt`,
    /// `messageCount` and `version` in the same transaction. `ConversationArchived` if archived.
    async fn append_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &NewMessage,
    ) -> StoreResult<MessageWrite>;

    /// A message, deleted or not (tombstones have no content).
    async fn get_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &MessageId,
    ) -> StoreResult<Option<Message>>;

    /// `NotFound` when the conversation does not exist.
    async fn list_messages(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        query: &MessageQuery,
    ) -> StoreResult<MessagePage>;

    /// Soft-deletes a message (content and metadata are erased); idempotent: deleting a deleted
    /// message changes nothing and returns it as it is.
    async fn soft_delete_message(
        &self,
        tenant: &TenantId,
        conversation: &ConversationId,
        message: &MessageId,
        deleted_by: &str,
    ) -> StoreResult<MessageWrite>;
}

#[async_trait]
pub trait MembershipStore: Send + Sync {
    async fn get_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> StoreResult<Option<Membership>>;

    async fn put_membership(
        &self,
        tenant: &TenantId,
        user: &UserId,
        input: &MembershipInput,
    ) -> StoreResult<Membership>;

    /// Returns the version the delete took (`NotFound` if there was no membership).
    async fn delete_membership(&self, tenant: &TenantId, user: &UserId) -> StoreResult<u64>;

    /// Every membership of the tenant, ordered by user id.
    async fn list_members(&self, tenant: &TenantId) -> StoreResult<Vec<Membership>>;
}

/// Whether the store answers (for `/readyz`).
#[async_trait]
pub trait StoreHealth: Send + Sync {
    async fn ping(&self) -> StoreResult<()>;
}

/// The four stores of one deployment, as trait objects, so a decorator can wrap each.
#[derive(Clone)]
pub struct StoreSet {
    pub policies: Arc<dyn PolicyStore>,
    pub configs: Arc<dyn ConfigStore>,
    pub conversations: Arc<dyn ConversationStore>,
    pub members: Arc<dyn MembershipStore>,
    pub health: Arc<dyn StoreHealth>,
    /// The change log (cache outbox); empty unless the backend was asked to record changes.
    pub changes: Arc<dyn ChangeLog>,
    /// Writes pushed as they commit, when other processes write to the same store
    /// (PostgreSQL); `None` for a store only this process writes.
    pub feed: Option<Arc<dyn ChangeFeed>>,
}

impl StoreSet {
    /// All five roles served by one backend value.
    pub fn from_backend<B>(backend: Arc<B>) -> Self
    where
        B: PolicyStore
            + ConfigStore
            + ConversationStore
            + MembershipStore
            + StoreHealth
            + ChangeLog
            + 'static,
    {
        Self {
            policies: backend.clone(),
            configs: backend.clone(),
            conversations: backend.clone(),
            members: backend.clone(),
            health: backend.clone(),
            changes: backend,
            feed: None,
        }
    }

    /// With the feed of changes other processes commit.
    pub fn with_feed(mut self, feed: Arc<dyn ChangeFeed>) -> Self {
        self.feed = Some(feed);
        self
    }
}
