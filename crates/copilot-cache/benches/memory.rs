//! L1 stays within its budget however many keys are read: effective configuration for 1,000,000
//! distinct users (each read fills L1 with the user level's "no row" entry and a merged
//! configuration) over the in-memory store, with the default bounds (10,000 entries, 64 MiB
//! per cache). Prints the process's RSS after 10 k, 100 k and 1 M users; the last line is
//! RSS growth from 100 k to 1 M users over the growth from 10 k to 100 k (bounded: ~0).
//!
//!     cargo bench -p copilot-cache --bench memory

use std::sync::Arc;

use copilot_cache::{CacheControl, CacheFlags, CacheSettings};
use copilot_domain::clock::SystemClock;
use copilot_domain::config::{ConfigLevel, ConfigPatch};
use copilot_domain::{TenantId, UserId};
use copilot_store::{ConfigStore, MemoryStore, StoreSet};
use serde_json::json;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
        let tenant = TenantId::parse("bench").unwrap();
        let patch = |v: serde_json::Value| ConfigPatch::from_json(&v).unwrap();
        store
            .put_patch(
                &ConfigLevel::Global,
                &patch(json!({"mergeMaxMessages": 10})),
                None,
                "s",
            )
            .await
            .unwrap();
        store
            .put_patch(
                &ConfigLevel::Tenant(tenant.clone()),
                &patch(json!({"pathMaxMessages": 20})),
                None,
                "s",
            )
            .await
            .unwrap();
        let settings = CacheSettings {
            flags: CacheFlags::default(),
            shared_store: false,
            ..Default::default()
        };
        let (stores, _control): (StoreSet, Arc<CacheControl>) =
            CacheControl::build(StoreSet::from_backend(store), settings).unwrap();
        let start = rss_kib();
        let mut marks = Vec::new();
        for i in 0..1_000_000u32 {
            let user = UserId::parse(&format!("user-{i:07}")).unwrap();
            let effective = stores
                .configs
                .get_effective(&tenant, Some(&user))
                .await
                .unwrap();
            assert_eq!(effective.values.merge_max_messages, 10);
            if [10_000, 100_000, 999_999].contains(&i) {
                let rss = rss_kib();
                println!(
                    "after {:>9} users: RSS {:>7} KiB (+{} KiB)",
                    i + 1,
                    rss,
                    rss - start
                );
                marks.push(rss);
            }
        }
        let early = (marks[1] as f64 - marks[0] as f64).max(1.0);
        let late = marks[2] as f64 - marks[1] as f64;
        println!("ratio={:.3}", late / early);
    });
}
