//! Shared set-up of the cache benchmarks: a SQLite store with one policy and three config levels.

#![allow(dead_code)]

use std::sync::Arc;

use copilot_cache::{CacheControl, CacheFlags, CacheSettings, RedisSettings};
use copilot_domain::config::{ConfigLevel, ConfigPatch};
use copilot_domain::policy::TenantLlmPolicy;
use copilot_domain::{TenantId, UserId};
use copilot_store::{ConfigStore, PolicyStore, SqliteOptions, SqliteStore, StoreSet};
use serde_json::json;

pub fn tenant() -> TenantId {
    TenantId::parse("bench").unwrap()
}

pub fn user() -> UserId {
    UserId::parse("u1").unwrap()
}

pub async fn seeded_sqlite() -> Arc<SqliteStore> {
    let dir = std::env::temp_dir().join(format!("copilot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(SqliteOptions::new(format!(
        "sqlite://{}/bench.db",
        dir.display()
    )))
    .await
    .unwrap();
    let t = tenant();
    let policy = TenantLlmPolicy::from_json(
        &json!({"defaultModel": "m", "defaultProvider": "openai",
                "tasks": [{"task": "summarize", "model": "claude", "provider": "anthropic"}]}),
        &t,
    )
    .unwrap();
    store.put_policy(&policy, None, "admin").await.unwrap();
    let patch = |v: serde_json::Value| ConfigPatch::from_json(&v).unwrap();
    store
        .put_patch(
            &ConfigLevel::Global,
            &patch(json!({"mergeMaxMessages": 10})),
            None,
            "svc",
        )
        .await
        .unwrap();
    store
        .put_patch(
            &ConfigLevel::Tenant(t.clone()),
            &patch(json!({"pathMaxMessages": 20})),
            None,
            "a",
        )
        .await
        .unwrap();
    store
        .put_patch(
            &ConfigLevel::User(t, user()),
            &patch(json!({"autoCompactEnabled": false})),
            None,
            "u",
        )
        .await
        .unwrap();
    Arc::new(store)
}

/// A cached instance over `store`: L1 only (`redis: None`) or with Redis (and its bus).
pub fn cached(
    store: &Arc<SqliteStore>,
    redis: Option<&str>,
    prefix: &str,
    shared_store: bool,
) -> (StoreSet, Arc<CacheControl>) {
    let settings = CacheSettings {
        redis: redis.map(RedisSettings::new),
        shared_store,
        flags: CacheFlags::default(),
        prefix: prefix.to_owned(),
        ..Default::default()
    };
    CacheControl::build(StoreSet::from_backend(store.clone()), settings).unwrap()
}

pub fn percentile(sorted: &[std::time::Duration], p: f64) -> std::time::Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
