//! The `copilot-state` binary as a new user runs it.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_copilot-state");

/// A free loopback port (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn command(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    for var in [
        "DATABASE_URL",
        "COPILOT_JWT_SECRET",
        "COPILOT_JWKS_FILE",
        "REDIS_URL",
        "COPILOT_BIND",
    ] {
        cmd.env_remove(var);
    }
    // Tests that are not about limits make more requests than the default allows.
    cmd.env("COPILOT_RATE_LIMIT", "100000/s");
    cmd
}

/// Starts `serve` with no configuration; returns the child and its banner lines.
fn serve(dir: &std::path::Path, port: u16) -> (Child, Vec<String>) {
    let mut child = command(dir)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.contains("export ALICE=");
        lines.push(line);
        if done || Instant::now() > deadline {
            break;
        }
    }
    (child, lines)
}

fn token_from(lines: &[String], var: &str) -> String {
    let prefix = format!("export {var}=");
    lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(&prefix).map(str::to_owned))
        .expect("token in banner")
}

fn stop(child: Child) -> std::process::ExitStatus {
    // SIGTERM by PID, then wait: shutdown drains and exits 0.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    stop_waiting(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_no_configuration_then_restart_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (child, banner) = serve(dir.path(), port);
    let text = banner.join("\n");
    assert!(
        text.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{text}"
    );
    assert!(text.contains("curl"), "{text}");
    let secret = dir.path().join("copilot-state.db.jwt-secret");
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The database and its WAL files are private too (they hold every tenant's conversations).
    for file in [
        "copilot-state.db",
        "copilot-state.db-wal",
        "copilot-state.db-shm",
    ] {
        let mode = std::fs::metadata(dir.path().join(file))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(mode, 0o600, "{file}");
    }
    let token = token_from(&banner, "TOKEN");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/config/global");
    let r = client
        .put(&url)
        .bearer_auth(&token)
        .json(&serde_json::json!({"mergeMaxMessages": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(stop(child).success(), "SIGTERM exits 0");

    // Second start: the same secret (the old token still works) and the same data.
    let (child, _) = serve(dir.path(), port);
    let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["mergeMaxMessages"],
        5
    );

    // `token` signs with the same secret.
    let out = command(dir.path())
        .args([
            "token", "--tenant", "acme", "--user", "zoe", "--role", "admin", "--ttl", "5m",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let zoe = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = client
        .put(format!("http://127.0.0.1:{port}/v1/tenants/acme/config"))
        .bearer_auth(&zoe)
        .json(&serde_json::json!({"pathMaxMessages": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["updatedBy"],
        "zoe"
    );
    assert!(stop(child).success());
}

#[test]
fn migrate_doctor_and_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    // doctor looks and never creates a database.
    let out = command(dir.path())
        .args(["doctor", "--database-url", "sqlite://./m.db"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("does not exist yet"),
        "{text}"
    );
    assert!(
        !dir.path().join("m.db").exists(),
        "doctor created the database"
    );
    // migrate says what it applied, then that there is nothing to apply.
    let out = command(dir.path())
        .args(["migrate", "--database-url", "sqlite://./m.db"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("applied 1 ")
            && text.contains("migration(s) applied"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("m.db").exists());
    let out = command(dir.path())
        .args(["migrate", "--database-url", "sqlite://./m.db"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("up to date"),
        "{text}"
    );
    // Errors name the thing: the database path, the variable.
    let out = command(dir.path())
        .args([
            "migrate",
            "--database-url",
            "sqlite:///no-such-directory/x.db",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("/no-such-directory/x.db"),
        "{stderr}"
    );
    let out = command(dir.path())
        .env("REDIS_URL", "redis://:::bad")
        .args(["serve", "--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("REDIS_URL"),
        "{stderr}"
    );
    let out = command(dir.path())
        .args(["doctor", "--database-url", "sqlite://./m.db"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("database: ok") && text.contains("redis: disabled"),
        "{text}"
    );
    // A bad boolean stops start-up naming the variable.
    let out = command(dir.path())
        .env("COPILOT_REQUIRE_MEMBERSHIP", "maybe")
        .args(["doctor"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("COPILOT_REQUIRE_MEMBERSHIP"));
    // DESIGN.md section 9, item 3: a cache flag that is no boolean stops start-up, named.
    let out = command(dir.path())
        .env("ENABLE_REDIS_CACHING", "maybe")
        .args(["serve", "--bind", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ENABLE_REDIS_CACHING"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = command(dir.path())
        .env("ENABLE_REDIS_CACHING", "Off")
        .args(["doctor", "--database-url", "sqlite://./m.db"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("ENABLE_REDIS_CACHING=false")
            && text.contains("policy cache: off"),
        "{text}"
    );
    let out = command(dir.path())
        .args(["token", "--tenant", "bad tenant"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `migrate`, `doctor` and `serve` switched to PostgreSQL by `--database-url` / `DATABASE_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_through_the_command_line() {
    let url = copilot_store::conformance::fresh_postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path())
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = command(dir.path())
        .env("DATABASE_URL", &url)
        .args(["doctor"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("database: ok"),
        "{text}"
    );
    assert!(
        text.contains("memberships required: true"),
        "Postgres requires memberships by default: {text}"
    );

    let port = free_port();
    let child = command(dir.path())
        .env("DATABASE_URL", &url)
        .env("COPILOT_JWT_SECRET", crate::SECRET)
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--no-migrate",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
        {
            break r;
        }
        assert!(Instant::now() < deadline, "serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready.status(), 200);
    let token = crate::Who::Service.token().unwrap();
    let r = client
        .put(format!("http://127.0.0.1:{port}/v1/config/global"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"mergeMaxMessages": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(stop(child).success());
}

/// Two `copilot-state serve` processes over one SQLite file and one Redis: a write answered by
/// one is served by the other (DESIGN.md 5.2), through L2 and the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_share_one_redis() {
    let redis = copilot_store::conformance::test_service("COPILOT_TEST_REDIS_URL");
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("cli{}", std::process::id());
    let start = |port: u16| {
        command(dir.path())
            .env("DATABASE_URL", "sqlite://./shared.db")
            .env("COPILOT_JWT_SECRET", crate::SECRET)
            .env("REDIS_URL", &redis)
            .env("COPILOT_CACHE_PREFIX", &prefix)
            .env("ENABLE_CONVERSATION_CACHING", "true")
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (port_a, port_b) = (free_port(), free_port());
    let a = start(port_a);
    // The second process starts after the first has migrated the shared file.
    let client = reqwest::Client::new();
    let ready = |port: u16| {
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(r) = client
                    .get(format!("http://127.0.0.1:{port}/readyz"))
                    .send()
                    .await
                    && r.json::<serde_json::Value>()
                        .await
                        .map(|v| v["redis"] == "ok")
                        .unwrap_or(false)
                {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "instance on {port} never became ready with Redis ok"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    ready(port_a).await;
    let b = start(port_b);
    ready(port_b).await;

    let token = crate::Who::Service.token().unwrap();
    let policy = |port: u16| format!("http://127.0.0.1:{port}/v1/tenants/acme/llm-policy");
    for i in 0..20 {
        let model = format!("m{i}");
        let put = client
            .put(policy(port_a))
            .bearer_auth(&token)
            .json(&serde_json::json!({"defaultModel": model, "defaultProvider": "openai"}))
            .send()
            .await
            .unwrap();
        assert_eq!(put.status(), 200);
        let written = Instant::now();
        loop {
            let got: serde_json::Value = client
                .get(policy(port_b))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if got["defaultModel"] == model.as_str() {
                break;
            }
            // The 100 ms figure is the benchmarks' to measure; here a loaded machine only
            // must not fail a working fleet.
            assert!(
                written.elapsed() < Duration::from_secs(5),
                "write {i} did not reach the other process"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let state: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port_b}/v1/admin/cache"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            state["redis"].as_str(),
            state["caches"]["conversation"]["enabled"].as_bool()
        ),
        (Some("ok"), Some(true))
    );
    assert!(stop(a).success());
    assert!(stop(b).success());
}

/// `token` never makes a secret of its own (its tokens would be refused); a token lifetime
/// beyond a year, a short configured secret, and PostgreSQL without a configured key are clear
/// errors at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_token_lifetimes_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = command(dir.path())
        .args(["token", "--tenant", "acme"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no JWT secret at"),
        "{stderr}"
    );
    assert!(!dir.path().join("copilot-state.db.jwt-secret").exists());
    for ttl in ["99999999999999d", "400d", "0s", "1w"] {
        let out = command(dir.path())
            .env("COPILOT_JWT_SECRET", crate::SECRET)
            .args(["token", "--tenant", "acme", "--ttl", ttl])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("--ttl"),
            "{ttl}: {stderr}"
        );
    }
    let out = command(dir.path())
        .env("COPILOT_JWT_SECRET", "short")
        .args(["serve", "--bind", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("at least 32 bytes"),
        "{stderr}"
    );
    let url = copilot_store::conformance::fresh_postgres_database().await;
    let out = command(dir.path())
        .env("DATABASE_URL", &url)
        .args(["serve", "--bind", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("COPILOT_JWT_SECRET"),
        "{stderr}"
    );
    assert!(!dir.path().join("copilot-state.jwt-secret").exists());
}

/// One info line per request (method, route template, status, duration, request id) and no
/// colour codes when stderr is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plain_log_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = command(dir.path())
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client
        .get(format!(
            "http://127.0.0.1:{port}/v1/tenants/acme/llm-policy"
        ))
        .header("x-request-id", "req-log-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let stderr = child.stderr.take().unwrap();
    assert!(stop(child).success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("req-log-test-1") && l.contains("status=401"))
        .unwrap_or_else(|| panic!("no request line in:\n{text}"));
    for part in [
        "INFO",
        "method=\"GET\"",
        "route=/v1/tenants/{t}/llm-policy",
        "duration_ms=",
    ] {
        assert!(line.contains(part), "{part} missing: {line}");
    }
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
}

/// SIGTERM and SIGINT with a request in flight: that request completes, new connections are
/// refused, and the process exits 0 within the drain limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_signals_let_the_request_in_flight_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for signal in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (child, banner) = serve(dir.path(), port);
        let token = token_from(&banner, "TOKEN");
        let body = br#"{"mergeMaxMessages": 12}"#;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream
            .write_all(
                format!(
                    "PUT /v1/config/global HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        stream.write_all(&body[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let _ = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status();
        // The listener closes: new connections are refused.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "{signal}: still accepting");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The request in flight completes.
        stream.write_all(&body[5..]).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{signal}: {answer}");
        let status = stop_waiting(child);
        assert!(status.success(), "{signal}: exit {status:?}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{signal}: drain too long"
        );
    }
}

/// Waits (up to 15 s) for a process that was already signalled.
fn stop_waiting(mut child: Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
