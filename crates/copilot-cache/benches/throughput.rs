//! Library throughput at concurrency 64: 64 tokio tasks on a multi-threaded runtime (one worker
//! per core) read the same cached rows (L1 hits) as fast as they can, as a fleet's request
//! handlers do. Compared with the TypeScript cache this replaces, whose cache hit measured
//! 98 k ops/s on this machine kind (goal: >= 100x).
//!
//!     cargo bench -p copilot-cache --bench throughput        # last line: ratio=<ops/s / 98000>

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cached, seeded_sqlite, tenant, user};

const TASKS: usize = 64;
const UPSTREAM_OPS_PER_S: f64 = 98_000.0;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let duration = Duration::from_secs(
        std::env::var("THROUGHPUT_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    let mut policy_rate = 0.0;
    rt.block_on(async {
        let store = seeded_sqlite().await;
        let (stores, _control) = cached(&store, None, "bench-throughput", false);
        let stores = Arc::new(stores);
        let (t, u) = (tenant(), user());
        stores.policies.get_policy(&t).await.unwrap();
        stores.configs.get_effective(&t, Some(&u)).await.unwrap();
        for what in ["policy", "effective_config"] {
            let deadline = Instant::now() + duration;
            let started = Instant::now();
            let mut tasks = Vec::with_capacity(TASKS);
            for _ in 0..TASKS {
                let stores = stores.clone();
                let (t, u) = (t.clone(), u.clone());
                tasks.push(tokio::spawn(async move {
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        // A batch between clock readings; yield so all 64 tasks take turns.
                        for _ in 0..256 {
                            if what == "policy" {
                                stores.policies.get_policy(&t).await.unwrap();
                            } else {
                                stores.configs.get_effective(&t, Some(&u)).await.unwrap();
                            }
                        }
                        done += 256;
                        tokio::task::yield_now().await;
                    }
                    done
                }));
            }
            let mut total = 0u64;
            for task in tasks {
                total += task.await.unwrap();
            }
            let rate = total as f64 / started.elapsed().as_secs_f64();
            println!(
                "{what}: {TASKS} tasks, {} workers: {:.2} M ops/s ({:.0}x the upstream 98 k ops/s)",
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                rate / 1e6,
                rate / UPSTREAM_OPS_PER_S
            );
            if what == "policy" {
                policy_rate = rate;
            }
        }
    });
    println!("ratio={:.1}", policy_rate / UPSTREAM_OPS_PER_S);
}
