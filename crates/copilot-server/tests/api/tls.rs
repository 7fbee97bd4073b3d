//! `copilot-state serve` against Redis over TLS, as deployed: a certificate or credentials
//! mistake stops start-up at once with a clear error; a Redis that is merely away does not stop
//! it (it serves, degraded); an Upstash-style `https://` URL with `REDIS_TOKEN` connects over
//! TLS. (The fleet tests themselves run over `rediss://` in the test script's TLS pass.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::SECRET;
use crate::fleet::{Instance, OwnRedis, free_port, service, service_token, tls_file};

const BIN: &str = env!("CARGO_BIN_EXE_copilot-state");

/// Runs `serve` with `env` and waits (10 s at most) for it to exit; its status and stderr.
fn serve_until_exit(env: &[(&str, String)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/db.sqlite?mode=rwc", dir.path().display()),
        )
        .env("COPILOT_JWT_SECRET", SECRET)
        .env_remove("REDIS_CA_FILE")
        .env_remove("REDIS_PASSWORD")
        .env_remove("REDIS_TOKEN");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .args(["serve", "--bind", &format!("127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn copilot-state");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let output = child.wait_with_output().unwrap();
            return (
                output.status.success(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve neither started nor stopped within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_wrong_ca_stops_start_up_with_a_clear_error() {
    let redis = OwnRedis::start_tls(&service("COPILOT_TEST_REDIS_SERVER"), &[]);
    let started = Instant::now();
    let (ok, stderr) = serve_until_exit(&[
        ("REDIS_URL", redis.url()),
        ("REDIS_CA_FILE", tls_file("other-ca.crt")),
    ]);
    assert!(!ok, "serve started with a CA that did not sign the server");
    assert!(stderr.contains("TLS handshake failed"), "{stderr}");
    assert!(stderr.contains("REDIS_CA_FILE"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "no hang");
    // A CA file that is not there is refused before any connection.
    let (ok, stderr) = serve_until_exit(&[
        ("REDIS_URL", redis.url()),
        ("REDIS_CA_FILE", "/nonexistent/ca.pem".to_owned()),
    ]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}

#[test]
fn wrong_credentials_stop_start_up_with_a_clear_error() {
    let redis = OwnRedis::start_tls(
        &service("COPILOT_TEST_REDIS_SERVER"),
        &["--requirepass", "right"],
    );
    let (ok, stderr) = serve_until_exit(&[
        ("REDIS_URL", redis.url()),
        ("REDIS_CA_FILE", tls_file("ca.crt")),
        ("REDIS_PASSWORD", "wrong".to_owned()),
    ]);
    assert!(!ok, "serve started with a wrong password");
    assert!(stderr.contains("refused the credentials"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unavailable_the_service_starts_and_serves_degraded() {
    let database = copilot_store::conformance::fresh_postgres_database().await;
    let nowhere = format!("rediss://localhost:{}", free_port());
    let instance = Instance::start(&database, Some(&nowhere), "tlsdown", &[]);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{}/readyz", instance.base)).send().await
            && r.json::<Value>()
                .await
                .is_ok_and(|v| v["redis"] == "degraded")
        {
            break;
        }
        assert!(Instant::now() < deadline, "never ready (degraded)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path = format!("{}/v1/tenants/acme/llm-policy", instance.base);
    let put = client
        .put(&path)
        .bearer_auth(service_token())
        .json(&json!({"defaultModel": "m", "defaultProvider": "openai"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let get = client
        .get(&path)
        .bearer_auth(service_token())
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstash_style_https_url_with_a_token_connects_over_tls() {
    let redis = OwnRedis::start_tls(
        &service("COPILOT_TEST_REDIS_SERVER"),
        &["--requirepass", "upstash-token"],
    );
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    let database = copilot_store::conformance::fresh_postgres_database().await;
    let upstash = format!("https://localhost:{port}");
    let instance = Instance::start(
        &database,
        Some(&upstash),
        "upstash",
        &[("REDIS_TOKEN", "upstash-token")],
    );
    // Ready means Redis answered and the bus heard its own heartbeat, over TLS.
    instance.ready().await;
    let state = crate::fleet::cache_state(&instance.base).await;
    assert_eq!(
        state["topology"],
        json!({"kind": "single", "tls": true, "nodes": [format!("localhost:{port}")], "primary": null}),
        "{state}"
    );
}

/// `doctor` over the production shape: PostgreSQL behind a transaction-mode pooler plus a direct
/// URL over TLS, Redis over TLS; and the warning when the direct URL is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_says_which_url_does_what_and_shows_the_redis_topology() {
    let direct = copilot_store::conformance::fresh_postgres_database().await;
    let (_, database) = direct.split('?').next().unwrap().rsplit_once('/').unwrap();
    let pooler = format!("{}/{database}", service("COPILOT_TEST_PGBOUNCER_URL"));
    let port = direct
        .split('?')
        .next()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let direct_tls = format!(
        "postgres://postgres@localhost:{port}/{database}?sslmode=verify-full&sslrootcert={}",
        tls_file("ca.crt")
    );
    let redis = OwnRedis::start_tls(&service("COPILOT_TEST_REDIS_SERVER"), &[]);
    let doctor = |env: &[(&str, &str)]| {
        let mut command = Command::new(BIN);
        command
            .env_remove("COPILOT_DIRECT_DATABASE_URL")
            .env_remove("REDIS_URL")
            .env("COPILOT_JWT_SECRET", SECRET);
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.arg("doctor").output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ca = tls_file("ca.crt");
    let redis_url = redis.url();
    let (ok, text) = doctor(&[
        ("DATABASE_URL", pooler.as_str()),
        ("COPILOT_PG_TRANSACTION_POOLER", "true"),
        ("COPILOT_DIRECT_DATABASE_URL", direct_tls.as_str()),
        ("REDIS_URL", redis_url.as_str()),
        ("REDIS_CA_FILE", ca.as_str()),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("DATABASE_URL (queries, through a transaction-mode pooler)"),
        "{text}"
    );
    assert!(
        text.contains("COPILOT_DIRECT_DATABASE_URL (migrations, LISTEN/NOTIFY)")
            && text.contains("[TLS: verify-full]"),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");
    assert!(
        text.contains(&format!(
            "[single, TLS: on, node(s): localhost:{}]",
            redis_url.rsplit(':').next().unwrap()
        )) && text.contains("redis: ok"),
        "{text}"
    );
    let (_, text) = doctor(&[
        ("DATABASE_URL", pooler.as_str()),
        ("COPILOT_PG_TRANSACTION_POOLER", "true"),
    ]);
    assert!(
        text.contains(
            "warning: COPILOT_PG_TRANSACTION_POOLER is on but COPILOT_DIRECT_DATABASE_URL is unset"
        ),
        "{text}"
    );
}
