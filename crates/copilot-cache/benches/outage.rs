//! Median read latency of the policy path with no Redis at all, with Redis up, and with Redis
//! killed or paused (SIGSTOP) once the breaker has opened (DESIGN.md 5.3, section 9 item 10).
//! Starts (and stops) a redis-server of its own.
//!
//!     cargo bench -p copilot-cache --bench outage          # needs redis-server on PATH

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{seeded_sqlite, tenant};
use copilot_cache::{CacheTier, CachedPolicyStore, RedisL2, RedisSettings, TierSettings};
use copilot_store::PolicyStore;

async fn median_read(store: &CachedPolicyStore, n: usize) -> Duration {
    let t = tenant();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        store
            .get_policy(&t)
            .await
            .expect("a read never fails because of Redis");
        samples.push(started.elapsed());
    }
    samples.sort();
    common::percentile(&samples, 0.5)
}

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    std::thread::sleep(Duration::from_millis(200));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = seeded_sqlite().await;
        let make = |redis: Option<&str>| {
            let l2 = redis.map(|url| Arc::new(RedisL2::new(&RedisSettings::new(url)).unwrap()));
            let settings = TierSettings {
                prefix: format!("bench-outage-{port}"),
                ..TierSettings::new("policy", Duration::from_secs(300))
            };
            (
                CachedPolicyStore::new(store.clone(), CacheTier::new(settings, l2.clone())),
                l2,
            )
        };
        let url = format!("redis://127.0.0.1:{port}");
        let (no_redis_store, _) = make(None);
        // No L1 in either case below (no bus): the comparison is the store path against Redis.
        let uncached = store.clone();
        let t = tenant();
        let mut store_only = Vec::new();
        for _ in 0..2000 {
            let started = Instant::now();
            uncached.get_policy(&t).await.unwrap();
            store_only.push(started.elapsed());
        }
        store_only.sort();
        let store_median = common::percentile(&store_only, 0.5);
        let (with_redis, l2) = make(Some(&url));
        let l2 = l2.unwrap();
        let up = median_read(&with_redis, 2000).await;
        // Kill: connection refused, breaker opens after 3 failures.
        let pid = redis.id().to_string();
        Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        median_read(&with_redis, 10).await; // open the breaker
        let paused = median_read(&with_redis, 2000).await;
        let breaker = l2.breaker_state();
        Command::new("kill").args(["-CONT", &pid]).status().unwrap();
        redis.kill().unwrap();
        redis.wait().unwrap();
        median_read(&with_redis, 10).await;
        let killed = median_read(&with_redis, 2000).await;
        let l1_only = median_read(&no_redis_store, 2000).await;
        println!("median read, policy path (2000 reads each):");
        println!("  store only (no cache):          {store_median:?}");
        println!("  L1 only (no Redis configured):  {l1_only:?}");
        println!("  Redis up (L2 hit):              {up:?}");
        println!(
            "  Redis paused (SIGSTOP), breaker {}: {paused:?}  ({:.2}x store only)",
            breaker.as_str(),
            paused.as_secs_f64() / store_median.as_secs_f64()
        );
        println!(
            "  Redis killed, breaker {}:       {killed:?}  ({:.2}x store only)",
            l2.breaker_state().as_str(),
            killed.as_secs_f64() / store_median.as_secs_f64()
        );
    });
}
