//! The in-memory backend: for tests and for library users who want no database. All state sits
//! behind one `std::sync::Mutex` that is never held across an `.await`. Every store goes through
//! the same flows as the SQL backends; this backend supplies only its statements (`rows.rs`,
//! `conversations.rs`).

mod conversations;
mod rows;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use copilot_domain::config::{ConfigLevel, StoredPatch};
use copilot_domain::conversation::{Conversation, Message};
use copilot_domain::membership::Membership;
use copilot_domain::policy::StoredPolicy;
use copilot_domain::{Clock, ConversationId, SystemClock, TenantId, UserId};

use crate::StoreResult;
use crate::changes::{Change, ChangeLog, ChangeSubject};
use crate::traits::StoreHealth;

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
