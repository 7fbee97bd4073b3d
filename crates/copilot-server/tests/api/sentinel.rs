//! Redis behind Sentinel: one primary, one replica, three sentinels. Two `serve` processes
//! under steady load; the primary is killed; the sentinels promote the replica; no request
//! fails, the service reports the new primary, and caching comes back on it.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fleet::{SteadyLoad, cache_state, fleet, free_port, service};
use crate::freshness::stale_rounds_of;

const MASTER: &str = "copilot";

/// A primary, a replica and three sentinels of the test's own, stopped on drop.
struct OwnSentinel {
    primary: (u16, Child),
    replica: (u16, Child),
    sentinels: Vec<(u16, Child)>,
    cli: String,
    _dir: tempfile::TempDir,
}

impl OwnSentinel {
    fn start() -> Self {
        let binary = service("COPILOT_TEST_REDIS_SERVER");
        let cli = crate::fleet::redis_cli_binary();
        let dir = tempfile::tempdir().unwrap();
        let server = |port: u16, extra: &[&str]| {
            Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(dir.path())
                .args(extra)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server")
        };
        let primary_port = free_port();
        let primary = server(primary_port, &[]);
        let replica_port = free_port();
        let replica = server(
            replica_port,
            &["--replicaof", "127.0.0.1", &primary_port.to_string()],
        );
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.path().display()
                ),
            )
            .unwrap();
            let child = Command::new(&binary)
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            sentinels.push((port, child));
        }
        let me = Self {
            primary: (primary_port, primary),
            replica: (replica_port, replica),
            sentinels,
            cli,
            _dir: dir,
        };
        // Ready: every sentinel knows the replica and the two other sentinels (a quorum can
        // fail over), and the replica is in sync.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = me.sentinels.iter().all(|(port, _)| {
                let info = me.cli(*port, &["sentinel", "master", MASTER]);
                let field = |name: &str| {
                    let lines: Vec<&str> = info.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .map(|v| v.to_string())
                };
                field("num-slaves").as_deref() == Some("1")
                    && field("num-other-sentinels").as_deref() == Some("2")
            }) && me
                .cli(replica_port, &["info", "replication"])
                .contains("master_link_status:up");
            if ready {
                return me;
            }
            assert!(Instant::now() < deadline, "sentinels never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        crate::fleet::redis_cli(&self.cli, port, args)
    }

    fn url(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", sentinels.join(","))
    }

    /// The primary's port as the first sentinel names it.
    fn named_primary(&self) -> Option<u16> {
        self.cli(
            self.sentinels[0].0,
            &["sentinel", "get-master-addr-by-name", MASTER],
        )
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
    }
}

impl Drop for OwnSentinel {
    fn drop(&mut self) {
        for (_, child) in self
            .sentinels
            .iter_mut()
            .chain([&mut self.primary, &mut self.replica])
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_fails_no_request_and_the_service_follows_the_new_one() {
    let mut redis = OwnSentinel::start();
    let (old, new) = (redis.primary.0, redis.replica.0);
    let Some(instances) = fleet(2, Some(&redis.url()), &[]).await else {
        return;
    };
    for instance in &instances {
        let state = cache_state(&instance.base).await;
        assert_eq!(state["topology"]["kind"], "sentinel", "{state}");
        assert_eq!(
            state["topology"]["primary"],
            format!("127.0.0.1:{old}"),
            "{state}"
        );
    }
    let instances = Arc::new(instances);
    let load = SteadyLoad::start(instances.clone(), &["acme"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = redis.primary.1.kill();
    let _ = redis.primary.1.wait();
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis.named_primary() != Some(new) {
        assert!(
            Instant::now() < deadline,
            "the sentinels never promoted the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The service follows: both instances report the new primary and Redis `ok` again.
    let deadline = Instant::now() + Duration::from_secs(15);
    for instance in instances.iter() {
        loop {
            let state = cache_state(&instance.base).await;
            if state["topology"]["primary"] == format!("127.0.0.1:{new}") && state["redis"] == "ok"
            {
                break;
            }
            assert!(Instant::now() < deadline, "not following: {state}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failed) = load.stop().await;
    eprintln!("sentinel failover: {ok} requests ok, {failed} failed");
    assert!(ok > 100, "only {ok} requests went through");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    let stale = stale_rounds_of(&instances[0], &instances[1], 100).await;
    assert_eq!(
        stale, 0,
        "{stale} of 100 reads on B were stale after 100 ms"
    );
}
