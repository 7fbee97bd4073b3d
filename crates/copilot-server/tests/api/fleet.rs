//! A fleet as users run it: several real `copilot-state serve` processes over one PostgreSQL and
//! one Redis. Live events cross instances and replay exactly; list streams are filtered per
//! subscriber; a stalled subscriber slows nobody; the rate limit is one limit for the fleet.

use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use copilot_domain::TenantId;
use copilot_server::auth::{TokenRole, issue_token};
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::SECRET;

const BIN: &str = env!("CARGO_BIN_EXE_copilot-state");

/// A test service's address by its variable; a test without it fails, naming it.
pub(crate) fn service(var: &str) -> String {
    copilot_store::conformance::test_service(var)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn token(user: &str) -> String {
    let acme = TenantId::parse("acme").unwrap();
    issue_token(SECRET, Some(&acme), user, TokenRole::Member, 3600).unwrap()
}

pub(crate) fn service_token() -> String {
    issue_token(SECRET, None, "backend", TokenRole::Service, 3600).unwrap()
}

/// One `copilot-state serve` process, stopped by PID (SIGTERM) when dropped.
pub struct Instance {
    child: Child,
    pub base: String,
    /// Its `COPILOT_CACHE_PREFIX`.
    pub prefix: String,
    /// What `/readyz` says of Redis once this instance is ready.
    redis_when_ready: &'static str,
}

impl Instance {
    /// `redis`: `None` for a PostgreSQL-only fleet.
    pub(crate) fn start(
        database: &str,
        redis: Option<&str>,
        prefix: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let mut command = Command::new(BIN);
        match redis {
            Some(url) => command.env("REDIS_URL", url),
            None => command.env_remove("REDIS_URL"),
        };
        // Over TLS, the test script's throw-away CA is the one to trust.
        command.env_remove("REDIS_CA_FILE");
        if redis.is_some_and(|url| url.starts_with("rediss://") || url.starts_with("https://")) {
            command.env("REDIS_CA_FILE", tls_file("ca.crt"));
        }
        command
            .env("DATABASE_URL", database)
            .env("COPILOT_JWT_SECRET", SECRET)
            .env("COPILOT_CACHE_PREFIX", prefix)
            .env("COPILOT_RATE_LIMIT", "100000/s")
            .env("COPILOT_PG_ACQUIRE_TIMEOUT_MS", "5000")
            .env_remove("COPILOT_JWKS_FILE")
            .env_remove("COPILOT_BIND");
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command
            .args([
                "serve",
                "--no-migrate",
                "--bind",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn copilot-state");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            prefix: prefix.to_owned(),
            redis_when_ready: if redis.is_some() { "ok" } else { "disabled" },
        }
    }

    /// Waits until it answers with Redis `ok` (bus and breaker healthy), or `disabled` without
    /// Redis.
    pub async fn ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.json::<Value>()
                    .await
                    .is_ok_and(|v| v["redis"] == self.redis_when_ready)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never became ready with Redis {}",
                self.base,
                self.redis_when_ready
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file the test script made for TLS (`COPILOT_TEST_TLS_DIR`: a throw-away CA, a server
/// certificate for `localhost`).
pub(crate) fn tls_file(name: &str) -> String {
    format!("{}/{name}", service("COPILOT_TEST_TLS_DIR"))
}

/// A redis-server of a test's own (append-only file in `dir`), stopped on drop. It speaks TLS
/// only (`rediss://localhost`) when started so, or when the script's TLS pass sets
/// `COPILOT_TEST_REDIS_TLS=1`.
pub struct OwnRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    tls: Option<Vec<String>>,
}

impl OwnRedis {
    pub(crate) fn start(binary: &str) -> Self {
        if std::env::var("COPILOT_TEST_REDIS_TLS").is_ok_and(|v| v == "1") {
            return Self::start_tls(binary, &[]);
        }
        Self::start_on(binary, free_port(), tempfile::tempdir().unwrap(), None)
    }

    /// TLS only, with the script's certificates and `extra` arguments (`--requirepass x`).
    pub(crate) fn start_tls(binary: &str, extra: &[&str]) -> Self {
        let mut args: Vec<String> = vec![
            "--tls-cert-file".into(),
            tls_file("server.crt"),
            "--tls-key-file".into(),
            tls_file("server.key"),
            "--tls-ca-cert-file".into(),
            tls_file("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::start_on(
            binary,
            free_port(),
            tempfile::tempdir().unwrap(),
            Some(args),
        )
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the server.
    pub(crate) fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    fn start_on(binary: &str, port: u16, dir: tempfile::TempDir, tls: Option<Vec<String>>) -> Self {
        let mut command = Command::new(binary);
        match &tls {
            None => command.args(["--port", &port.to_string()]),
            Some(args) => command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(args),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child,
            port,
            dir,
            tls,
        }
    }

    pub(crate) fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://localhost:{}", self.port),
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// SIGTERM (the append-only file is flushed), then the same port and directory again.
    fn restart(self, binary: &str) -> Self {
        let mut me = self;
        me.stop();
        let (port, dir, tls) = (
            me.port,
            std::mem::replace(&mut me.dir, tempfile::tempdir().unwrap()),
            me.tls.take(),
        );
        Self::start_on(binary, port, dir, tls)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` instances over a fresh database and `redis`.
pub(crate) async fn fleet(
    n: usize,
    redis: Option<&str>,
    extra: &[(&str, &str)],
) -> Option<Vec<Instance>> {
    let database = copilot_store::conformance::fresh_postgres_database().await;
    let prefix = format!("fleet{}", uuid::Uuid::now_v7().simple());
    let mut instances = Vec::new();
    for _ in 0..n {
        let instance = Instance::start(&database, redis, &prefix, extra);
        instance.ready().await;
        instances.push(instance);
    }
    Some(instances)
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseMessage {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// A minimal SSE client over reqwest.
pub struct SseClient {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buffer: String,
}

impl SseClient {
    pub async fn open(url: &str, token: &str, last_event_id: Option<&str>) -> Self {
        let mut request = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("open the event stream");
        assert_eq!(response.status(), 200, "opening {url}");
        Self {
            body: Box::pin(response.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
            buffer: String::new(),
        }
    }

    /// The next event within `within`; `None` on timeout or when the stream ends.
    pub async fn next(&mut self, within: Duration) -> Option<SseMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if event.is_empty() && data.is_empty() {
                    continue; // a heartbeat comment
                }
                return Some(SseMessage {
                    id,
                    event,
                    data: serde_json::from_str(&data).unwrap_or(Value::Null),
                });
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Every event until one satisfies `last` (included), or panics after `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        last: impl Fn(&SseMessage) -> bool,
    ) -> Vec<SseMessage> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("stream ended or timed out; saw {seen:?}"));
            let done = last(&message);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}

async fn call(method: reqwest::Method, url: String, token: &str, body: Option<Value>) -> Value {
    let mut request = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let value = response.json::<Value>().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{url}: {status} {value}");
    value
}

async fn create_conversation(base: &str, token: &str, body: Value) -> String {
    let created = call(
        reqwest::Method::POST,
        format!("{base}/v1/tenants/acme/conversations"),
        token,
        Some(body),
    )
    .await;
    created["id"].as_str().expect("id").to_owned()
}

async fn append(base: &str, token: &str, conversation: &str, content: &str) -> Value {
    call(
        reqwest::Method::POST,
        format!("{base}/v1/tenants/acme/conversations/{conversation}/messages"),
        token,
        Some(json!({"role": "user", "content": content})),
    )
    .await
}

const WAIT: Duration = Duration::from_secs(10);

/// Posts custom events on `conversation` through `base` until one reaches Redis (its id is not
/// null).
async fn publishes_again(base: &str, conversation: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let accepted = call(
            reqwest::Method::POST,
            format!("{base}/v1/tenants/acme/conversations/{conversation}/events"),
            &service_token(),
            Some(json!({"type": "probe"})),
        )
        .await;
        if accepted["id"].is_string() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} never published to Redis again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A message appended on A reaches a subscriber on B; a subscriber on B that reconnects with
/// `Last-Event-ID` gets exactly what it missed, in order; the same across a Redis restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_instances_and_a_reconnect_replays_exactly_even_across_a_redis_restart() {
    let binary = service("COPILOT_TEST_REDIS_SERVER");
    let redis = OwnRedis::start(&binary);
    let Some(instances) = fleet(
        2,
        Some(&redis.url()),
        &[("COPILOT_REQUIRE_MEMBERSHIP", "false")],
    )
    .await
    else {
        return;
    };
    let (a, b) = (&instances[0], &instances[1]);
    let alice = token("alice");
    let conversation = create_conversation(&a.base, &alice, json!({"title": "t"})).await;
    let events = format!(
        "{}/v1/tenants/acme/conversations/{conversation}/events",
        b.base
    );

    let mut stream = SseClient::open(&events, &alice, None).await;
    append(&a.base, &alice, &conversation, "one").await;
    let first = stream.next(WAIT).await.expect("the append reaches B");
    assert_eq!(first.event, "message.appended");
    assert_eq!(first.data["content"], "one");
    let last_id = first.id.clone().expect("an id");
    drop(stream);

    for content in ["two", "three", "four"] {
        append(&a.base, &alice, &conversation, content).await;
    }
    let mut again = SseClient::open(&events, &alice, Some(&last_id)).await;
    let missed = again.until(WAIT, |m| m.data["content"] == "four").await;
    let contents: Vec<&Value> = missed.iter().map(|m| &m.data["content"]).collect();
    assert_eq!(contents, [&json!("two"), &json!("three"), &json!("four")]);
    assert!(missed.iter().all(|m| m.event == "message.appended"));
    let last_id = missed.last().and_then(|m| m.id.clone()).expect("an id");
    drop(again);

    // Redis restarted between the two connections (its append-only file keeps the streams).
    // An event published while an instance's connection is still down is lost (that topic's
    // readers then get `resync`): wait until each instance publishes to Redis again, on
    // another conversation.
    let other = create_conversation(&a.base, &alice, json!({})).await;
    let redis = redis.restart(&binary);
    for instance in [a, b] {
        instance.ready().await;
        publishes_again(&instance.base, &other).await;
    }
    for content in ["five", "six"] {
        append(&a.base, &alice, &conversation, content).await;
    }
    let mut after_restart = SseClient::open(&events, &alice, Some(&last_id)).await;
    let missed = after_restart
        .until(WAIT, |m| m.data["content"] == "six")
        .await;
    let contents: Vec<&Value> = missed.iter().map(|m| &m.data["content"]).collect();
    assert_eq!(contents, [&json!("five"), &json!("six")], "{missed:?}");
    drop(redis);
}

/// DESIGN.md section 9, item 2: the tenant list stream sent every member events about private
/// conversations. Three users of one tenant on the list stream of another instance: what is
/// private to one never reaches the others; making a shared conversation private sends them
/// `conversation.removed`; a suspended member's streams end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_02_list_stream_never_sends_private_conversations_to_colleagues() {
    let redis = service("COPILOT_TEST_REDIS_URL");
    let Some(instances) = fleet(2, Some(&redis), &[("COPILOT_REQUIRE_MEMBERSHIP", "true")]).await
    else {
        return;
    };
    let (a, b) = (&instances[0], &instances[1]);
    let service = service_token();
    for user in ["alice", "bob", "carol"] {
        call(
            reqwest::Method::PUT,
            format!("{}/v1/tenants/acme/members/{user}", a.base),
            &service,
            Some(json!({"role": "member", "status": "active"})),
        )
        .await;
    }
    let list = format!("{}/v1/tenants/acme/conversations/events", b.base);
    let (alice, bob, carol) = (token("alice"), token("bob"), token("carol"));
    let mut streams = Vec::new();
    for t in [&alice, &bob, &carol] {
        streams.push(SseClient::open(&list, t, None).await);
    }
    let private = create_conversation(&a.base, &alice, json!({"title": "secret"})).await;
    append(&a.base, &alice, &private, "private words").await;
    let shared = create_conversation(
        &a.base,
        &alice,
        json!({"title": "shared", "shareAudience": "tenant"}),
    )
    .await;
    call(
        reqwest::Method::PATCH,
        format!("{}/v1/tenants/acme/conversations/{shared}", a.base),
        &alice,
        Some(json!({"shareAudience": "private"})),
    )
    .await;
    // A marker everyone may see closes each stream's read.
    let marker = create_conversation(
        &a.base,
        &bob,
        json!({"title": "marker", "shareAudience": "tenant"}),
    )
    .await;
    let is_marker = |m: &SseMessage| m.event == "conversation.created" && m.data["id"] == marker;

    let seen_by_alice = streams[0].until(WAIT, is_marker).await;
    assert!(seen_by_alice.iter().any(|m| m.data["id"] == private));
    for stream in &mut streams[1..] {
        let seen = stream.until(WAIT, is_marker).await;
        assert!(
            seen.iter().all(|m| m.data["id"] != private),
            "a colleague saw the private conversation: {seen:?}"
        );
        let about_shared: Vec<&str> = seen
            .iter()
            .filter(|m| m.data["id"] == shared)
            .map(|m| m.event.as_str())
            .collect();
        assert_eq!(
            about_shared,
            ["conversation.created", "conversation.removed"]
        );
        let removed = seen
            .iter()
            .find(|m| m.event == "conversation.removed")
            .unwrap();
        assert_eq!(removed.data, json!({"id": shared}), "the id only");
    }

    // Carol is suspended: her list stream ends, and nothing more reaches her.
    let mut carol_conversation = SseClient::open(
        &format!("{}/v1/tenants/acme/conversations/{marker}/events", b.base),
        &carol,
        None,
    )
    .await;
    call(
        reqwest::Method::PUT,
        format!("{}/v1/tenants/acme/members/carol", a.base),
        &service,
        Some(json!({"role": "member", "status": "suspended"})),
    )
    .await;
    let last = carol_conversation.next(WAIT).await.expect("an event");
    assert_eq!(
        (last.event.as_str(), &last.data),
        ("conversation.removed", &json!({"id": marker}))
    );
    assert!(
        carol_conversation
            .next(Duration::from_secs(2))
            .await
            .is_none()
    );
    create_conversation(
        &a.base,
        &bob,
        json!({"title": "after", "shareAudience": "tenant"}),
    )
    .await;
    assert!(
        streams[2].next(Duration::from_secs(2)).await.is_none(),
        "a suspended member's list stream ends"
    );
    let bob_sees = streams[1].next(WAIT).await.expect("bob still follows");
    assert_eq!(bob_sees.data["title"], "after");
}

/// A subscriber that reads nothing fills its socket and its buffer; appends and the other
/// subscribers go on, and the stalled one is dropped (with `resync`) instead of slowing anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_delay_appends_or_other_subscribers() {
    use tokio::io::AsyncWriteExt;
    let redis = service("COPILOT_TEST_REDIS_URL");
    let Some(instances) = fleet(
        2,
        Some(&redis),
        &[
            ("COPILOT_REQUIRE_MEMBERSHIP", "false"),
            ("COPILOT_EVENT_BUFFER", "16"),
        ],
    )
    .await
    else {
        return;
    };
    let (a, b) = (&instances[0], &instances[1]);
    let alice = token("alice");
    let conversation = create_conversation(&a.base, &alice, json!({})).await;
    let path = format!("/v1/tenants/acme/conversations/{conversation}/events");

    // The stalled subscriber: a raw connection that sends its request and never reads.
    let address = b.base.trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(address.parse().unwrap()).await.unwrap();
    stalled
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {alice}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut reader = SseClient::open(&format!("{}{path}", b.base), &alice, None).await;

    let content = "x".repeat(200_000);
    let count = 60;
    let started = Instant::now();
    let writer = {
        let (base, alice, conversation, content) = (
            a.base.clone(),
            alice.clone(),
            conversation.clone(),
            content.clone(),
        );
        tokio::spawn(async move {
            for _ in 0..count {
                append(&base, &alice, &conversation, &content).await;
            }
        })
    };
    let received = reader
        .until(Duration::from_secs(60), |m| {
            m.event == "message.appended" && m.data["seq"] == count
        })
        .await;
    writer.await.unwrap();
    let seqs: Vec<u64> = received
        .iter()
        .filter_map(|m| m.data["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs,
        (1..=count).collect::<Vec<u64>>(),
        "in order, none lost"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "appends and the reader were not held up"
    );
    // The stalled subscriber was dropped rather than buffered without bound.
    let metrics = reqwest::get(format!("{}/metrics", b.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("copilot_events_dropped_total") && !l.ends_with(" 0")),
        "no subscriber was dropped:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("events"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(stalled);
}

/// DESIGN.md section 9, item 11: the rate limiter trusted `X-Forwarded-For` and allowed
/// everything when Redis was down. Two instances share one limit; a rotated `X-Forwarded-For`
/// does not change an anonymous client's key; with Redis stopped requests are still limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regression_11_two_instances_share_one_rate_limit_and_redis_down_still_limits() {
    let binary = service("COPILOT_TEST_REDIS_SERVER");
    let mut redis = OwnRedis::start(&binary);
    let limits = [
        ("COPILOT_REQUIRE_MEMBERSHIP", "false"),
        ("COPILOT_RATE_LIMIT", "60/min"),
        ("COPILOT_RATE_LIMIT_BURST", "10"),
        ("COPILOT_RATE_LIMIT_INSTANCES", "2"),
    ];
    let Some(instances) = fleet(2, Some(&redis.url()), &limits).await else {
        return;
    };
    let client = reqwest::Client::new();
    let policy = |i: usize| format!("{}/v1/tenants/acme/llm-policy", instances[i % 2].base);

    // One user, requests split between the two instances: limited as one (burst 10, 1/s).
    let alice = token("alice");
    let started = Instant::now();
    let mut allowed = 0;
    let mut limited = None;
    for i in 0..40 {
        let r = client
            .get(policy(i))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert!(r.headers().contains_key("ratelimit-limit"));
        assert!(r.headers().contains_key("ratelimit-remaining"));
        assert!(r.headers().contains_key("ratelimit-reset"));
        if r.status() == 429 {
            limited.get_or_insert(r);
        } else {
            allowed += 1;
        }
    }
    let refill = started.elapsed().as_secs() + 1;
    assert!(
        (10..=10 + refill).contains(&allowed),
        "allowed {allowed} of 40 across two instances"
    );
    let limited = limited.expect("some were limited");
    assert!(limited.headers().contains_key("retry-after"));
    let problem: Value = limited.json().await.unwrap();
    assert_eq!(problem["code"], "rate_limited");

    // No token: keyed by the socket peer, whatever X-Forwarded-For says (no trusted proxies).
    let mut anonymous_limited = 0;
    for i in 0..30 {
        let r = client
            .get(policy(i))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            401 => {}
            429 => anonymous_limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        anonymous_limited >= 15,
        "rotating X-Forwarded-For escaped the limit ({anonymous_limited} of 30 limited)"
    );

    // Redis stopped: each instance allows its share (half the burst), never everything.
    redis.stop();
    let bob = token("bob");
    let mut allowed = 0;
    for i in 0..40 {
        let r = client
            .get(policy(i))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 404 | 429), "{}", r.status());
        if r.status() != 429 {
            allowed += 1;
        }
    }
    assert!(
        (1..=12).contains(&allowed),
        "Redis down: allowed {allowed} of 40 (two instances, 5 each)"
    );
}

/// A steady stream of writes on one instance and reads on the other (policy, effective
/// config), alternating instances and tenants, counting what succeeded and what failed, until
/// stopped. For fault tests: "no request failed" is `stop().1 == 0`.
pub(crate) struct SteadyLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyLoad {
    pub(crate) fn start(
        instances: std::sync::Arc<Vec<Instance>>,
        tenants: &'static [&'static str],
    ) -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (flag, ok_count, failed_count) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut round = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let t = tenants[round % tenants.len()];
                let (a, b) = (&instances[round % 2], &instances[(round + 1) % 2]);
                let requests = [
                    (
                        reqwest::Method::PUT,
                        format!("{}/v1/tenants/{t}/llm-policy", a.base),
                        Some(
                            json!({"defaultModel": format!("m{round}"), "defaultProvider": "openai"}),
                        ),
                    ),
                    (
                        reqwest::Method::GET,
                        format!("{}/v1/tenants/{t}/llm-policy", b.base),
                        None,
                    ),
                    (
                        reqwest::Method::GET,
                        format!("{}/v1/tenants/{t}/config/effective?userId=u1", b.base),
                        None,
                    ),
                ];
                for (method, url, body) in requests {
                    let mut request = client
                        .request(method, &url)
                        .bearer_auth(service_token())
                        .timeout(Duration::from_secs(10));
                    if let Some(body) = body {
                        request = request.json(&body);
                    }
                    match request.send().await {
                        Ok(r) if r.status().is_success() => {
                            ok_count.fetch_add(1, Ordering::Relaxed)
                        }
                        other => {
                            eprintln!("{url}: {other:?}");
                            failed_count.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                round += 1;
            }
        });
        Self {
            stop,
            ok,
            failed,
            task,
        }
    }

    /// Stops the load; (succeeded, failed).
    pub(crate) async fn stop(self) -> (usize, usize) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// `GET /v1/admin/cache` of an instance, as a service.
pub(crate) async fn cache_state(base: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{base}/v1/admin/cache"))
        .bearer_auth(service_token())
        .send()
        .await
        .expect("GET /v1/admin/cache")
        .json()
        .await
        .expect("JSON")
}

/// The `redis-cli` beside the test script's `redis-server`.
pub(crate) fn redis_cli_binary() -> String {
    std::path::Path::new(&service("COPILOT_TEST_REDIS_SERVER"))
        .with_file_name("redis-cli")
        .display()
        .to_string()
}

/// `redis-cli -p <port> <args>` (the binary at `cli`); its standard output.
pub(crate) fn redis_cli(cli: &str, port: u16, args: &[&str]) -> String {
    let out = Command::new(cli)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
