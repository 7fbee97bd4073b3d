//! The cache tier of copilot-state (DESIGN.md section 5).
//!
//! What is cached is the stored row, never a per-caller answer; access rules run on every read,
//! hit or miss, above this layer. This increment has:
//!
//! - [`breaker::CircuitBreaker`]: closed -> open after consecutive failures -> half-open probe;
//!   time from `tokio::time`, so tests drive it with a paused clock;
//! - [`redis_l2::RedisL2`]: Redis with a deadline on every call and the breaker in front; the
//!   version-guarded fill, tombstone and negative-entry scripts of DESIGN.md 5.2;
//! - [`tier::CacheTier`]: L1 (bounded, versioned) + L2 + single flight for one kind of row;
//! - caching decorators for all four store traits: policy, config (per level, one `MGET`),
//!   conversation records (the access rule runs above, on every hit), memberships (the auth
//!   validation cache);
//! - [`factory`]: the decorated [`copilot_store::StoreSet`] chosen from the cache flags, and the
//!   run-time kill switch.
//!
//! Not yet here (see the cache issue's note): the invalidation bus and with it L1 across
//! instances, and the crash-proof invalidation outbox.

pub mod breaker;
pub mod bus;
pub mod config;
pub mod conversation;
pub mod counting;
pub mod entry;
pub mod events;
pub mod factory;
pub mod feed;
pub mod keys;
pub mod membership;
pub mod policy;
pub mod ratelimit;
pub mod redis_connect;
pub mod redis_l2;
mod redis_link;
mod redis_nodes;
mod redis_sentinel;
pub mod tier;
pub mod trust;

pub use breaker::{BreakerState, CircuitBreaker};
pub use config::CachedConfigStore;
pub use conversation::CachedConversationStore;
pub use factory::{CacheControl, CacheFlags, CacheSettings, CacheState};
pub use membership::CachedMembershipStore;
pub use policy::CachedPolicyStore;
pub use redis_l2::{RedisL2, RedisSettings, RedisTls};
pub use tier::{CacheTier, TierSettings};
