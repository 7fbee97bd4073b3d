//! Storage of copilot-state (DESIGN.md section 4): one trait per store, typed errors, and the
//! `memory`, `sqlite` and `postgres` backends. Caching decorators implement the same traits and
//! pass the same conformance suite (`conformance` feature).

mod changes;
mod conversation_rows;
mod error;
pub mod memory;
pub mod postgres;
mod sql;
pub mod sqlite;
mod traits;
mod versioned;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use changes::{Change, ChangeFeed, ChangeLog, ChangeStream, ChangeSubject, Notice};
pub use error::{StoreError, StoreResult};
pub use memory::MemoryStore;
pub use postgres::{CHANGES_CHANNEL, PostgresChangeFeed, PostgresOptions, PostgresStore};
pub use sqlite::{SqliteOptions, SqliteStore};
pub use traits::{
    ConfigStore, ConversationStore, MembershipStore, PolicyStore, StoreHealth, StoreSet,
};

/// The migrations of `migrator` whose versions are in `after` but not in `before`.
pub(crate) fn migrations_applied(
    migrator: &sqlx::migrate::Migrator,
    before: &[i64],
    after: &[i64],
) -> Vec<String> {
    migrator
        .iter()
        .filter(|m| after.contains(&m.version) && !before.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect()
}
