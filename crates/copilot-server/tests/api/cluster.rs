//! A fleet on Redis Cluster: two `serve` processes over PostgreSQL and a cluster of three
//! primaries. Reads stay fresh, every key of a tenant lives in the tenant's slot, and with one
//! primary paused and then another killed and failed over to its replica, no request fails
//! and caching comes back by itself.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fleet::{Instance, SteadyLoad, fleet, service, service_token};
use crate::freshness::stale_rounds_of;

/// A Redis Cluster of the test's own (for faults), stopped on drop.
pub struct OwnCluster {
    nodes: Vec<(u16, Child)>,
    cli: String,
    _dir: tempfile::TempDir,
}

/// A port P with P + 10000 (the cluster bus) free as well.
fn cluster_port() -> u16 {
    loop {
        let port = 20_000 + (rand_u32() % 35_000) as u16;
        if [port, port + 10_000]
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return port;
        }
    }
}

fn rand_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

impl OwnCluster {
    /// `primaries` primaries with `replicas` replicas each; failover after a 1 s node timeout.
    pub fn start(primaries: usize, replicas: usize) -> Self {
        let binary = service("COPILOT_TEST_REDIS_SERVER");
        let cli = crate::fleet::redis_cli_binary();
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..primaries * (replicas + 1) {
            let port = cluster_port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                ])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000", "--dir"])
                .arg(&node_dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server");
            nodes.push((port, child));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (port, _) in &nodes {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let me = Self {
            nodes,
            cli,
            _dir: dir,
        };
        let addresses: Vec<String> = me
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new(&me.cli)
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(created.success());
        me.wait_ok(Duration::from_secs(30));
        me
    }

    /// `redis://127.0.0.1:P1,127.0.0.1:P2,...` (every node: the client learns the roles).
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis://{}", nodes.join(","))
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        crate::fleet::redis_cli(&self.cli, port, args)
    }

    fn alive(&mut self) -> Vec<u16> {
        self.nodes
            .iter_mut()
            .filter_map(|(p, c)| matches!(c.try_wait(), Ok(None)).then_some(*p))
            .collect()
    }

    /// The ports of the primaries that serve slots, as a live node sees them.
    pub fn primaries(&mut self) -> Vec<u16> {
        let port = self.alive()[0];
        let mut primaries: Vec<u16> = self
            .cli(port, &["cluster", "nodes"])
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail") && l.split(' ').count() > 8)
            .filter_map(|l| l.split(' ').nth(1)?.split(['@', ':']).nth(1)?.parse().ok())
            .collect();
        primaries.sort_unstable();
        primaries
    }

    /// Waits until every live node says `cluster_state:ok`.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for (port, _) in &self.nodes {
            loop {
                let info = self.cli(*port, &["cluster", "info"]);
                if info.contains("cluster_state:ok") || info.is_empty() {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ok: {info}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn signal(&self, port: u16, signal: &str) {
        if let Some((_, child)) = self.nodes.iter().find(|(p, _)| *p == port) {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    pub fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every key on every live primary.
    pub fn keys(&mut self) -> Vec<(u16, String)> {
        self.primaries()
            .into_iter()
            .flat_map(|port| {
                self.cli(port, &["--scan"])
                    .lines()
                    .map(|k| (port, k.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn keyslot(&self, key: &str) -> String {
        let port = self.nodes[0].0;
        self.cli(port, &["cluster", "keyslot", key])
            .trim()
            .to_owned()
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(service_token())
        .timeout(Duration::from_secs(10));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.expect("request")
}

/// Touches every kind of key for `tenants`: policy, three config levels, a conversation with
/// messages (event stream), and the rate limiter.
async fn traffic(a: &Instance, b: &Instance, tenants: &[&str]) {
    for t in tenants {
        let base = format!("{}/v1/tenants/{t}", a.base);
        for (method, path, body) in [
            (
                reqwest::Method::PUT,
                "/llm-policy".to_owned(),
                json!({"defaultModel": "m", "defaultProvider": "openai"}),
            ),
            (
                reqwest::Method::PUT,
                "/config".to_owned(),
                json!({"mergeMaxMessages": 80}),
            ),
            (
                reqwest::Method::PUT,
                "/users/u1/config".to_owned(),
                json!({"pathMaxMessages": 500}),
            ),
        ] {
            let r = call(method, format!("{base}{path}"), Some(body)).await;
            assert!(r.status().is_success(), "{path}: {}", r.status());
        }
        let created: Value = call(
            reqwest::Method::POST,
            format!("{base}/conversations"),
            Some(json!({"title": "t", "userId": "u1"})),
        )
        .await
        .json()
        .await
        .unwrap();
        let id = created["id"].as_str().expect("conversation id").to_owned();
        let r = call(
            reqwest::Method::POST,
            format!("{base}/conversations/{id}/messages"),
            Some(json!({"role": "user", "content": "hello"})),
        )
        .await;
        assert!(r.status().is_success(), "append: {}", r.status());
        for path in ["/llm-policy", "/config/effective?userId=u1"] {
            let r = call(
                reqwest::Method::GET,
                format!("{}/v1/tenants/{t}{path}", b.base),
                None,
            )
            .await;
            assert!(r.status().is_success(), "{path}: {}", r.status());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_cluster_reads_fresh_and_keeps_each_tenant_in_its_slot() {
    let mut cluster = OwnCluster::start(3, 0);
    let Some(instances) = fleet(2, Some(&cluster.url()), &[("REDIS_CLUSTER", "true")]).await else {
        return;
    };
    let (a, b) = (&instances[0], &instances[1]);
    let state: Value = call(
        reqwest::Method::GET,
        format!("{}/v1/admin/cache", a.base),
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(state["topology"]["kind"], "cluster", "{state}");
    assert_eq!(state["redis"], "ok", "{state}");
    // Once the slot map is known, `nodes` lists the three primaries.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state: Value = call(
            reqwest::Method::GET,
            format!("{}/v1/admin/cache", a.base),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        if state["topology"]["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 3)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `doctor` reports the cluster and its primaries.
    let doctor = Command::new(env!("CARGO_BIN_EXE_copilot-state"))
        .env(
            "DATABASE_URL",
            copilot_store::conformance::fresh_postgres_database().await,
        )
        .env("REDIS_URL", cluster.url())
        .env("COPILOT_JWT_SECRET", crate::SECRET)
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(text.contains("cluster with 3 primaries"), "{text}");
    let tenants = ["acme", "beta", "gamma", "delta"];
    traffic(a, b, &tenants).await;
    let stale = stale_rounds_of(a, b, 300).await;
    assert_eq!(
        stale, 0,
        "{stale} of 300 reads on B were stale after 100 ms"
    );
    // Every key of a tenant carries the tenant's hash tag and sits in its slot.
    let keys = cluster.keys();
    let mine: Vec<&(u16, String)> = keys
        .iter()
        .filter(|(_, k)| k.starts_with(&format!("{}:", a.prefix)))
        .collect();
    assert!(!mine.is_empty(), "no keys under {}", a.prefix);
    let mut nodes_by_tenant: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    for tenant in tenants {
        let tag = format!("{{{tenant}}}");
        let slot = cluster.keyslot(&tag);
        for (port, key) in &mine {
            let rest = &key[a.prefix.len()..];
            if rest.contains(tenant) {
                assert!(
                    key.contains(&tag),
                    "{key} names {tenant} outside its hash tag"
                );
                assert_eq!(cluster.keyslot(key), slot, "{key}");
                nodes_by_tenant.entry(tenant).or_default().insert(*port);
            }
        }
        assert!(
            nodes_by_tenant.get(tenant).is_some_and(|n| n.len() == 1),
            "{tenant}: {nodes_by_tenant:?}"
        );
    }
    // Only the switch, the drainer lease and the global config live outside any tenant.
    for (_, key) in &mine {
        assert!(
            key.contains(":v1:{") || key.contains(":v1:global:"),
            "{key} belongs to no tenant and is not global"
        );
    }
    // Tenants spread over more than one primary: the test really crossed slots.
    let used: BTreeSet<u16> = nodes_by_tenant.values().flatten().copied().collect();
    assert!(used.len() > 1, "{nodes_by_tenant:?}");
}

/// Redis calls per node, summed over the fleet, from `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
struct NodeCalls {
    others_ok: u64,
    paused_skipped: u64,
}

async fn node_calls(instances: &[Instance], paused: u16) -> NodeCalls {
    let mut calls = NodeCalls::default();
    for instance in instances {
        let text = reqwest::get(format!("{}/metrics", instance.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in text
            .lines()
            .filter(|l| l.starts_with("copilot_redis_node_calls_total{"))
        {
            let value: u64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            let on_paused = line.contains(&format!(":{paused}\""));
            if !on_paused && line.contains("outcome=\"ok\"") {
                calls.others_ok += value;
            }
            if on_paused && line.contains("outcome=\"skipped\"") {
                calls.paused_skipped += value;
            }
        }
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_and_a_killed_one_fail_no_request_and_caching_resumes() {
    let mut cluster = OwnCluster::start(3, 1);
    let Some(instances) = fleet(2, Some(&cluster.url()), &[("REDIS_CLUSTER", "true")]).await else {
        return;
    };
    let instances = Arc::new(instances);
    let load = SteadyLoad::start(
        instances.clone(),
        &["acme", "beta", "gamma", "delta", "eps", "zeta"],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    // One primary stops answering for 3 s. Its breaker opens; the other primaries keep serving
    // their slots from L2 (one breaker per node).
    cluster.signal(primaries[0], "-STOP");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = node_calls(&instances, primaries[0]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = node_calls(&instances, primaries[0]).await;
    cluster.signal(primaries[0], "-CONT");
    assert!(
        after.others_ok > before.others_ok,
        "the other primaries stopped serving while one was paused: {before:?} -> {after:?}"
    );
    assert!(
        after.paused_skipped > before.paused_skipped,
        "the paused primary's breaker did not open: {before:?} -> {after:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Another is killed: its replica takes over.
    cluster.kill(primaries[1]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = cluster.primaries();
        if now.len() == 3 && !now.contains(&primaries[1]) {
            break;
        }
        assert!(Instant::now() < deadline, "no failover: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.wait_ok(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ok, failed) = load.stop().await;
    eprintln!("cluster faults: {ok} requests ok, {failed} failed");
    assert!(ok > 100, "only {ok} requests went through");
    assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    // Caching resumed: Redis is `ok` again on both, and reads are fresh.
    for instance in instances.iter() {
        instance.ready().await;
    }
    let stale = stale_rounds_of(&instances[0], &instances[1], 100).await;
    assert_eq!(
        stale, 0,
        "{stale} of 100 reads on B were stale after 100 ms"
    );
}
