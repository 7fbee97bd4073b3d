//! HTTP handlers. Each one parses its input, asks the domain's access rules, calls the store
//! traits and answers; none talks to SQL or Redis directly, and errors map to HTTP in
//! `crate::error` only.

pub mod config;
pub mod conversations;
pub mod health;
pub mod members;
pub mod policy;

use std::future::Future;
use std::time::Instant;

/// Runs one store call and records its latency (`copilot_store_duration_seconds{op}`).
pub async fn timed<T>(op: &'static str, call: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let out = call.await;
    metrics::histogram!("copilot_store_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    out
}
