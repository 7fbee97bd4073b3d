//! An L1 hit, an L2 hit and a store read for the policy and effective-config paths, beside a
//! bare Redis `GET` and a bare primary-key `SELECT` on the same database, in one run.
//!
//!     COPILOT_BENCH_REDIS_URL=redis://127.0.0.1:6379 cargo bench -p copilot-cache --bench cache_paths

mod common;

use std::time::Duration;

use common::{cached, seeded_sqlite, tenant, user};
use copilot_store::{ConfigStore, PolicyStore};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(seeded_sqlite());
    let (t, u) = (tenant(), user());
    let redis = std::env::var("COPILOT_BENCH_REDIS_URL").ok();
    let mut group = c.benchmark_group("cache_paths");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));

    // L1 only (no Redis): every read after the first is an in-process hit.
    let (l1, _c1) = rt.block_on(async { cached(&store, None, "bench-l1", false) });
    rt.block_on(async {
        l1.policies.get_policy(&t).await.unwrap();
        l1.configs.get_effective(&t, Some(&u)).await.unwrap();
    });
    group.bench_function("policy/l1_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { l1.policies.get_policy(&t).await.unwrap() })
    });
    group.bench_function("effective_config/l1_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { l1.configs.get_effective(&t, Some(&u)).await.unwrap() })
    });

    // The store itself.
    group.bench_function("policy/store_read", |b| {
        b.to_async(&rt)
            .iter(|| async { store.get_policy(&t).await.unwrap() })
    });
    group.bench_function("effective_config/store_read", |b| {
        b.to_async(&rt)
            .iter(|| async { store.get_effective(&t, Some(&u)).await.unwrap() })
    });
    group.bench_function("bare/sqlite_pk_select", |b| {
        b.to_async(&rt).iter(|| async {
            let row: Option<String> =
                sqlx::query_scalar("SELECT document FROM tenant_llm_policies WHERE tenant_id = ?")
                    .bind("bench")
                    .fetch_optional(store.pool())
                    .await
                    .unwrap();
            row
        })
    });

    if let Some(url) = redis {
        // L2: Redis configured, L1 not trusted (no bus in this instance) so every read is one
        // Redis round trip.
        let ((policies, configs), l2) = rt.block_on(async {
            let mut settings = copilot_cache::RedisSettings::new(&url);
            settings.timeout = Duration::from_millis(200);
            let l2 = std::sync::Arc::new(copilot_cache::RedisL2::new(&settings).unwrap());
            let policy_tier = copilot_cache::CacheTier::new(
                copilot_cache::TierSettings {
                    prefix: "bench-l2".into(),
                    ..copilot_cache::TierSettings::new("policy", Duration::from_secs(300))
                },
                Some(l2.clone()),
            );
            let config_tier = copilot_cache::CacheTier::new(
                copilot_cache::TierSettings {
                    prefix: "bench-l2".into(),
                    ..copilot_cache::TierSettings::new("config", Duration::from_secs(300))
                },
                Some(l2.clone()),
            );
            let policies = copilot_cache::CachedPolicyStore::new(store.clone(), policy_tier);
            let configs = copilot_cache::CachedConfigStore::new(store.clone(), config_tier);
            policies.get_policy(&t).await.unwrap();
            configs.get_effective(&t, Some(&u)).await.unwrap();
            ((policies, configs), l2)
        });
        group.bench_function("policy/l2_hit", |b| {
            b.to_async(&rt)
                .iter(|| async { policies.get_policy(&t).await.unwrap() })
        });
        group.bench_function("effective_config/l2_hit", |b| {
            b.to_async(&rt)
                .iter(|| async { configs.get_effective(&t, Some(&u)).await.unwrap() })
        });
        let key = format!("bench-l2:v1:{{{t}}}:policy");
        group.bench_function("bare/redis_get", |b| {
            b.to_async(&rt)
                .iter(|| async { l2.get(&key).await.unwrap() })
        });
    } else {
        eprintln!("COPILOT_BENCH_REDIS_URL is not set: skipping the L2 benchmarks");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
