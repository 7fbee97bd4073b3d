//! HTTP handlers. Each one parses its input, asks the domain's access rules, calls the store
//! traits and answers; none talks to SQL or Redis directly, and errors map to HTTP in
//! `crate::error` only.

pub mod admin;
pub mod config;
pub mod conversations;
pub mod events;
pub mod health;
pub mod members;
pub mod params;
pub mod policy;
pub mod responses;
