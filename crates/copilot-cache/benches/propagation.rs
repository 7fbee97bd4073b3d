//! Cross-instance freshness (DESIGN.md 5.2): two cache stacks (two "instances") over one store
//! and one Redis, both with L1 in use behind the invalidation bus. 1,000 times: instance A writes
//! a new policy version; from the moment the write returns, instance B reads until it sees it.
//! Prints p50/p99/max of that delay.
//!
//!     COPILOT_BENCH_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p copilot-cache --bench propagation

mod common;

use std::time::{Duration, Instant};

use common::{cached, seeded_sqlite, tenant};
use copilot_domain::policy::TenantLlmPolicy;
use serde_json::json;

fn main() {
    let Ok(url) = std::env::var("COPILOT_BENCH_REDIS_URL") else {
        eprintln!("set COPILOT_BENCH_REDIS_URL to run this benchmark");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = seeded_sqlite().await;
        let prefix = format!("bench-prop-{}", std::process::id());
        let (a, ca) = cached(&store, Some(&url), &prefix, true);
        let (b, cb) = cached(&store, Some(&url), &prefix, true);
        let started = Instant::now();
        while !(ca.bus_healthy() && cb.bus_healthy()) {
            assert!(started.elapsed() < Duration::from_secs(5), "bus not healthy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = tenant();
        let mut delays = Vec::with_capacity(1000);
        let mut l1_hits_seen = 0u64;
        for i in 0..1000 {
            // B has the current version in L1 before each write.
            b.policies.get_policy(&t).await.unwrap();
            let policy = TenantLlmPolicy::from_json(&json!({"defaultModel": format!("m{i}"), "defaultProvider": "openai"}), &t).unwrap();
            let written = a.policies.put_policy(&policy, None, "bench").await.unwrap().version;
            let returned = Instant::now();
            loop {
                let seen = b.policies.get_policy(&t).await.unwrap().unwrap().version;
                if seen >= written {
                    break;
                }
                l1_hits_seen += 1;
                assert!(returned.elapsed() < Duration::from_secs(1), "write {i} never reached B");
            }
            delays.push(returned.elapsed());
        }
        delays.sort();
        println!(
            "propagation over 1000 writes: p50 {:?}, p99 {:?}, max {:?} ({} reads on B still saw the old version)",
            common::percentile(&delays, 0.50),
            common::percentile(&delays, 0.99),
            delays[delays.len() - 1],
            l1_hits_seen
        );
    });
}
