//! PostgreSQL stopping under a stream of writes (DESIGN.md 5.3, last point): every write that got
//! a 2xx survives, every other one is absent, no request hangs past the store deadline, and the
//! service recovers by itself when the database returns. Uses a PostgreSQL cluster of its own,
//! since it stops it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use copilot_server::state::ServiceSettings;
use copilot_store::{PostgresOptions, PostgresStore};
use serde_json::json;

use crate::{TENANT, TestServer, Who};

/// A throwaway PostgreSQL cluster, owned by the `postgres` OS user when the tests run as root.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if unsafe_is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    fn create(bin: PathBuf) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("copilot-pg-fault")
            .tempdir_in("/tmp")
            .expect("temp dir");
        if unsafe_is_root() {
            let ok = Command::new("chown")
                .args(["postgres"])
                .arg(dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self { bin, dir, port };
        let status = cluster
            .command("initdb")
            .args(["-D"])
            .arg(cluster.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-o", &options, "start"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(status.success(), "pg_ctl start failed");
    }

    fn stop(&self) {
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("pg_ctl stop");
        assert!(status.success(), "pg_ctl stop failed");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn unsafe_is_root() -> bool {
    // `id -u` keeps this free of libc bindings.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A cluster of the test's own, started, and a store over it that announces its writes.
async fn started_cluster() -> (Arc<Cluster>, Arc<PostgresStore>) {
    let bin = copilot_store::conformance::test_service("COPILOT_TEST_PG_BIN");
    let cluster = Arc::new(Cluster::create(PathBuf::from(bin)));
    cluster.start();
    let store = Arc::new(
        PostgresStore::open(PostgresOptions {
            notify_changes: true,
            ..PostgresOptions::new(cluster.url())
        })
        .await
        .expect("open"),
    );
    (cluster, store)
}

struct Outcome {
    content: String,
    status: u16,
    code: String,
    elapsed: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopping_mid_stream_loses_no_acknowledged_write() {
    let (cluster, store) = started_cluster().await;
    let deadline = Duration::from_secs(2);
    let server = TestServer::start_over(
        crate::TestStore::Postgres(store),
        ServiceSettings {
            store_timeout: deadline,
            ..TestServer::default_settings(false)
        },
    )
    .await;
    let server = Arc::new(server);
    let conversation = crate::conversation(&server, Who::Owner, json!({})).await;
    let path = format!("/v1/tenants/{TENANT}/conversations/{conversation}/messages");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (server, path, stop) = (server.clone(), path.clone(), stop.clone());
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let content = format!("write-{i}");
                let started = Instant::now();
                let r = server
                    .post(
                        &path,
                        Who::Owner,
                        json!({"role": "user", "content": content}),
                    )
                    .await;
                outcomes.push(Outcome {
                    content,
                    status: r.status.as_u16(),
                    code: r.body["code"].as_str().unwrap_or_default().to_owned(),
                    elapsed: started.elapsed(),
                });
                i += 1;
            }
            outcomes
        })
    };

    tokio::time::sleep(Duration::from_millis(400)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap();
    // Let the service recover by itself and write for a while longer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let outcomes = writer.await.unwrap();

    let acknowledged: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 201).collect();
    let refused: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 201).collect();
    assert!(!refused.is_empty(), "the outage was not observed");
    for o in &refused {
        assert_eq!(
            (o.status, o.code.as_str()),
            (503, "store_unavailable"),
            "{}",
            o.content
        );
    }
    let last_refused = outcomes.iter().rposition(|o| o.status != 201).unwrap();
    assert!(
        last_refused + 1 < outcomes.len(),
        "writes succeed again after PostgreSQL returns"
    );
    let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap();
    assert!(
        slowest < deadline + Duration::from_millis(1000),
        "a request hung for {slowest:?}"
    );

    // Exactly the acknowledged writes are stored.
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = server
            .get(&format!("{path}?limit=500&after={after}"), Who::Owner)
            .await;
        let items = page.ok(200)["items"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        after = items.last().unwrap()["seq"].as_u64().unwrap();
        stored.extend(
            items
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_owned()),
        );
    }
    let want: Vec<String> = acknowledged.iter().map(|o| o.content.clone()).collect();
    assert_eq!(
        stored, want,
        "stored messages are exactly the acknowledged writes, in order"
    );
    eprintln!(
        "{} writes: {} acknowledged, {} refused with 503; slowest {:?}",
        outcomes.len(),
        acknowledged.len(),
        refused.len(),
        slowest
    );
}

/// Soak finding (issue "Speed"): a read whose cache entries expired while PostgreSQL was down
/// failed with 503 (a "no row" entry lives 30 s, so some read always was due during a restart).
/// With Redis up, L1 stays trusted through the bus, and a cached read is answered from what L1
/// last held, "no row" levels included; a write still fails. Real PostgreSQL (stopped) and
/// real Redis; lifetimes of 1 s so the entries are expired during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_reads_are_answered_while_postgres_is_down() {
    let redis_url = copilot_store::conformance::test_service("COPILOT_TEST_REDIS_URL");
    let (cluster, store) = started_cluster().await;
    let cache = copilot_cache::CacheSettings {
        redis: Some(copilot_cache::RedisSettings::new(&redis_url)),
        prefix: format!("pgdown{}", std::process::id()),
        l1_ttl: Duration::from_secs(1),
        negative_ttl: Duration::from_secs(1),
        ..TestServer::default_cache()
    };
    let server = TestServer::start_cached(
        crate::TestStore::Postgres(store),
        TestServer::default_settings(false),
        cache,
    )
    .await;
    let effective = format!("/v1/tenants/{TENANT}/config/effective");
    server
        .put(
            "/v1/config/global",
            Who::Service,
            json!({"mergeMaxMessages": 80}),
        )
        .await
        .ok(200);
    let before = server.get(&effective, Who::Owner).await.ok(200).clone();

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
    // Past every lifetime: L1's, and the "no row" entries' in Redis too.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..5 {
        let during = server.get(&effective, Who::Owner).await;
        assert_eq!(
            during.ok(200),
            &before,
            "answered from L1 while PostgreSQL is down"
        );
    }
    let write = server
        .put(
            "/v1/config/global",
            Who::Service,
            json!({"mergeMaxMessages": 81}),
        )
        .await;
    write.problem(503, "store_unavailable");

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap();
}
