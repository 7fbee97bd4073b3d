//! Pure domain rules of copilot-state (DESIGN.md section 3): no I/O, no async.
//!
//! Everything a store, a cache or the HTTP layer needs to decide *what* is right lives here:
//! identifiers, the tenant LLM policy and its validation, route and egress resolution, the
//! conversation-config hierarchy, conversations and messages, the access table, and the
//! opaque list cursor.

pub mod access;
pub mod clock;
pub mod config;
pub mod conversation;
pub mod cursor;
pub mod egress;
pub mod error;
pub mod id;
pub mod json;
pub mod membership;
pub mod policy;
pub mod route;
pub mod status;

pub use access::{Denial, Principal, TenantRole, UserPrincipal};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use error::{FieldError, InputError};
pub use id::{ConversationId, IdError, MessageId, TenantId, UserId};
