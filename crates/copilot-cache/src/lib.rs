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
//! - caching decorators for [`copilot_store::PolicyStore`] and [`copilot_store::ConfigStore`].
//!
//! Not yet here (see the cache issue's note): the invalidation bus and with it L1 across
//! instances, the conversation and membership decorators, the crash-proof invalidation outbox,
//! the cache flags and `/v1/admin/cache`.

pub mod breaker;
pub mod config;
pub mod entry;
pub mod policy;
pub mod redis_l2;
pub mod tier;

pub use breaker::{BreakerState, CircuitBreaker};
pub use config::CachedConfigStore;
pub use policy::CachedPolicyStore;
pub use redis_l2::{RedisL2, RedisSettings};
pub use tier::{CacheTier, TierSettings};
