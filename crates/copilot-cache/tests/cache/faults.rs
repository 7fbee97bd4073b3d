//! Redis killed, restarted, paused and resumed under a stream of reads and writes
//! (DESIGN.md section 9, item 10, at the library level): nothing fails, the breaker opens, and
//! when Redis returns caching resumes by itself without serving a row older than the last write.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use copilot_cache::BreakerState;
use copilot_store::PolicyStore;

use crate::{counting, fresh_prefix, policy, redis_url, stack, tenant};

/// A redis-server of this test's own, stopped (and continued first if paused) on drop.
pub struct OwnRedis {
    child: Child,
    port: u16,
    binary: String,
    dir: Option<std::path::PathBuf>,
    tls: Option<Vec<String>>,
}

impl OwnRedis {
    pub fn start(binary: &str, port: u16) -> Self {
        Self::start_in(binary, port, None)
    }

    /// With `dir`, Redis keeps an append-only file there (it survives a restart).
    pub fn start_in(binary: &str, port: u16, dir: Option<&std::path::Path>) -> Self {
        Self::start_full(binary, port, dir, None)
    }

    /// Speaking TLS only, with the test script's certificates (`COPILOT_TEST_TLS_DIR`) and
    /// `extra` arguments (`--tls-auth-clients yes`, `--requirepass x`).
    pub fn start_tls(binary: &str, port: u16, extra: &[&str]) -> Self {
        let dir = redis_url("COPILOT_TEST_TLS_DIR");
        let mut args: Vec<String> = [
            "--tls-cert-file",
            &format!("{dir}/server.crt"),
            "--tls-key-file",
            &format!("{dir}/server.key"),
            "--tls-ca-cert-file",
            &format!("{dir}/ca.crt"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        if !extra.contains(&"--tls-auth-clients") {
            args.extend(["--tls-auth-clients".into(), "no".into()]);
        }
        Self::start_full(binary, port, None, Some(args))
    }

    fn start_full(
        binary: &str,
        port: u16,
        dir: Option<&std::path::Path>,
        tls: Option<Vec<String>>,
    ) -> Self {
        let mut command = Command::new(binary);
        match &tls {
            None => command.args(["--port", &port.to_string()]),
            Some(args) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(args),
        };
        command.args(["--bind", "127.0.0.1", "--save", ""]);
        match dir {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command.stdout(Stdio::null()).spawn().expect("redis-server");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            port,
            binary: binary.to_owned(),
            dir: dir.map(std::path::Path::to_path_buf),
            tls,
        }
    }

    /// `redis://127.0.0.1:port`, or `rediss://localhost:port` (the certificate's name) for TLS.
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://localhost:{}", self.port),
        }
    }

    /// Stops it (SIGTERM: an append-only file is flushed) and starts it again on its port.
    pub fn restart_gracefully(&mut self) {
        self.signal("-CONT");
        self.signal("-TERM");
        let _ = self.child.wait();
        let (binary, dir, tls) = (self.binary.clone(), self.dir.clone(), self.tls.clone());
        *self = Self::start_full(&binary, self.port, dir.as_deref(), tls);
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    fn kill(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        self.kill();
        let (binary, dir, tls) = (self.binary.clone(), self.dir.clone(), self.tls.clone());
        *self = Self::start_full(&binary, self.port, dir.as_deref(), tls);
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (5 s at most) until `reader` serves model `m{model}`.
async fn converged(reader: &crate::Stack, t: &copilot_domain::TenantId, model: u32, stage: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = reader
            .policies
            .get_policy(t)
            .await
            .expect("a read never fails because of Redis")
            .unwrap()
            .policy
            .default_model
            .clone();
        if seen == format!("m{model}") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stage {stage}: the other instance kept serving {seen}, not m{model}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_10_redis_killed_and_paused_under_load_nothing_fails_and_nothing_stale_returns()
{
    let binary = redis_url("COPILOT_TEST_REDIS_SERVER");
    let port = crate::free_port();
    // With an append-only file the restarted Redis comes back holding the rows it had before
    // it was killed: stale ones, unless the protocol repairs them.
    let dir = tempfile::tempdir().unwrap();
    let mut redis = OwnRedis::start_in(&binary, port, Some(dir.path()));
    let store = counting().await;
    let prefix = fresh_prefix();
    let s = stack(
        store.clone(),
        Some(&format!("redis://127.0.0.1:{port}")),
        &prefix,
    );
    // A second instance that only reads (it writes nothing, so it knows of no pending
    // invalidation): it must converge to the newest row too.
    let reader = stack(
        store.clone(),
        Some(&format!("redis://127.0.0.1:{port}")),
        &prefix,
    );
    let l2 = s.l2.clone().unwrap();
    let t = tenant("acme");
    let mut model: u32 = 0;
    s.policies
        .put_policy(&policy(&t, "m0"), None, "admin")
        .await
        .unwrap();

    // Reads and writes keep working whatever Redis does; every read sees the latest write.
    for stage in ["kill", "restart", "pause", "resume"] {
        match stage {
            "kill" => redis.kill(),
            "restart" => redis.restart(),
            "pause" => redis.signal("-STOP"),
            _ => redis.signal("-CONT"),
        }
        if stage == "restart" || stage == "resume" {
            // Nothing written yet in this stage: the newest row was written while Redis was
            // gone; the restarted Redis still holds an older one. Only the protocol (the writer
            // re-sending its tombstones) can bring the reader there.
            converged(&reader, &t, model, stage).await;
        }
        for i in 0..60 {
            if i % 10 == 0 {
                model += 1;
                s.policies
                    .put_policy(&policy(&t, &format!("m{model}")), None, "admin")
                    .await
                    .unwrap();
            }
            let got = s
                .policies
                .get_policy(&t)
                .await
                .expect("a read never fails because of Redis");
            assert_eq!(
                got.unwrap().policy.default_model,
                format!("m{model}"),
                "stage {stage}, read {i}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        converged(&reader, &t, model, stage).await;
        if stage == "kill" || stage == "pause" {
            // Open, or half-open while a background probe is out: not closed.
            assert_ne!(
                l2.breaker_state(),
                BreakerState::Closed,
                "the breaker opens during {stage}"
            );
        }
    }
    // Back to normal: the breaker closes by itself and Redis serves the newest row again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while l2.breaker_state() != BreakerState::Closed
        || s.policies.tier().pending_invalidations() > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "caching did not resume"
        );
        let _ = s.policies.get_policy(&t).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reads_before = store.policy_reads.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(
            s.policies
                .get_policy(&t)
                .await
                .unwrap()
                .unwrap()
                .policy
                .default_model,
            format!("m{model}")
        );
    }
    let extra = store.policy_reads.load(std::sync::atomic::Ordering::SeqCst) - reads_before;
    assert!(
        extra <= 1,
        "after recovery reads are served by Redis again ({extra} store reads)"
    );
}

/// Issue "Speed": the breaker probes Redis from a background task, never on a request. With
/// Redis paused, once the breaker is open no call waits for Redis (a request that carried the
/// probe would wait the whole deadline); when Redis answers again the breaker closes with no
/// request made at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_is_probed_in_the_background_never_on_a_request() {
    let binary = redis_url("COPILOT_TEST_REDIS_SERVER");
    let redis = OwnRedis::start(&binary, crate::free_port());
    let deadline = Duration::from_millis(200);
    let l2 = copilot_cache::RedisL2::new(&copilot_cache::RedisSettings {
        timeout: deadline,
        breaker_failures: 2,
        breaker_open_for: Duration::from_millis(300),
        ..copilot_cache::RedisSettings::new(redis.url())
    })
    .expect("redis url");
    assert!(l2.ping().await, "Redis answers at first");

    redis.signal("-STOP");
    while l2.breaker_state() != BreakerState::Open {
        l2.ping().await;
    }
    // Several open periods: each would hand its probe to a request if requests probed.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut slowest = Duration::ZERO;
    while tokio::time::Instant::now() < until {
        let started = tokio::time::Instant::now();
        assert!(!l2.ping().await, "paused Redis cannot answer");
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        slowest < deadline / 2,
        "a request waited {slowest:?} on the paused Redis: it carried the probe"
    );

    redis.signal("-CONT");
    let closed_by = tokio::time::Instant::now() + Duration::from_secs(5);
    while l2.breaker_state() != BreakerState::Closed {
        assert!(
            tokio::time::Instant::now() < closed_by,
            "the background probe never closed the breaker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(l2.ping().await);
}
