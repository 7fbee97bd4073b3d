//! Redis over TLS with the test script's throw-away CA (`COPILOT_TEST_TLS_DIR`): the right CA
//! connects and the caches work through it; a wrong CA is told apart from an outage, quickly;
//! a server that wants a client certificate gets ours; ACL users and an Upstash-style
//! `https://` URL with a token log in.

use std::time::{Duration, Instant};

use copilot_cache::redis_connect::{check, is_certificate_error};
use copilot_cache::{RedisL2, RedisSettings, RedisTls};
use copilot_store::PolicyStore;

use crate::faults::OwnRedis;
use std::sync::atomic::Ordering;

use crate::{counting, free_port, fresh_prefix, policy, redis_url, stack_over, tenant};

fn tls_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(&redis_url("COPILOT_TEST_TLS_DIR")).join(name)
}

fn settings(url: &str, ca: &str) -> RedisSettings {
    RedisSettings {
        tls: RedisTls {
            ca_file: Some(tls_file(ca)),
            ..RedisTls::default()
        },
        timeout: Duration::from_millis(500),
        ..RedisSettings::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_ca_connects_and_the_caches_work_over_tls() {
    let redis = OwnRedis::start_tls(&redis_url("COPILOT_TEST_REDIS_SERVER"), free_port(), &[]);
    let settings = settings(&redis.url(), "ca.crt");
    check(&settings.client().unwrap(), Duration::from_secs(2))
        .await
        .expect("TLS PING");
    let l2 = RedisL2::new(&settings).unwrap();
    assert!(l2.set("tls-probe", "yes").await);
    assert_eq!(l2.get("tls-probe").await, Some(Some("yes".to_owned())));
    // Two instances' caches (L1 + L2 over TLS): what A wrote, B reads from Redis, not the store.
    let prefix = fresh_prefix();
    let store = counting().await;
    let (a, b) = (
        stack_over(store.clone(), Some(settings.clone()), &prefix),
        stack_over(store.clone(), Some(settings), &prefix),
    );
    let t = tenant("tls");
    a.policies
        .put_policy(&policy(&t, "m1"), None, "admin")
        .await
        .unwrap();
    let reads = store.policy_reads.load(Ordering::SeqCst);
    let read = b.policies.get_policy(&t).await.unwrap().unwrap();
    assert_eq!(read.policy.default_model, "m1");
    assert_eq!(
        store.policy_reads.load(Ordering::SeqCst),
        reads,
        "B's read went to the store, not to Redis over TLS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_a_certificate_error_not_an_outage() {
    let redis = OwnRedis::start_tls(&redis_url("COPILOT_TEST_REDIS_SERVER"), free_port(), &[]);
    let started = Instant::now();
    let wrong = check(
        &settings(&redis.url(), "other-ca.crt").client().unwrap(),
        Duration::from_secs(2),
    )
    .await
    .expect_err("a server signed by another CA");
    assert!(is_certificate_error(&wrong), "{wrong:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "no hang");
    // The name is checked: 127.0.0.1 is not in the certificate.
    let by_ip = redis.url().replace("localhost", "127.0.0.1");
    let mismatch = check(
        &settings(&by_ip, "ca.crt").client().unwrap(),
        Duration::from_secs(2),
    )
    .await
    .expect_err("a name the certificate does not carry");
    assert!(is_certificate_error(&mismatch), "{mismatch:?}");
    // Nothing listening is an outage, not a certificate problem.
    let down = format!("rediss://localhost:{}", free_port());
    let outage = check(
        &settings(&down, "ca.crt").client().unwrap(),
        Duration::from_secs(2),
    )
    .await
    .expect_err("nothing listens");
    assert!(!is_certificate_error(&outage), "{outage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_wants_a_client_certificate_gets_ours() {
    let redis = OwnRedis::start_tls(
        &redis_url("COPILOT_TEST_REDIS_SERVER"),
        free_port(),
        &["--tls-auth-clients", "yes"],
    );
    let without = settings(&redis.url(), "ca.crt");
    let refused = check(&without.client().unwrap(), Duration::from_secs(2))
        .await
        .expect_err("connected without a client certificate");
    assert!(is_certificate_error(&refused), "{refused:?}");
    let mut with = without.clone();
    with.tls.client_cert_file = Some(tls_file("client.crt"));
    with.tls.client_key_file = Some(tls_file("client.key"));
    check(&with.client().unwrap(), Duration::from_secs(2))
        .await
        .expect("with the client certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_and_upstash_tokens_log_in() {
    let redis = OwnRedis::start_tls(
        &redis_url("COPILOT_TEST_REDIS_SERVER"),
        free_port(),
        &["--requirepass", "upstash-token"],
    );
    let port = redis.url().rsplit(':').next().unwrap().to_owned();
    // Upstash: the REST URL's host, the token as the password of user `default`.
    let mut upstash = settings(&format!("https://localhost:{port}"), "ca.crt");
    assert!(upstash.client().is_err(), "no token, no entry");
    upstash.password = Some("upstash-token".into());
    check(&upstash.client().unwrap(), Duration::from_secs(2))
        .await
        .expect("Upstash-style URL with its token");
    // An ACL user of its own.
    let mut admin = settings(&redis.url(), "ca.crt");
    admin.password = Some("upstash-token".into());
    let l2 = RedisL2::new(&admin).unwrap();
    let created: Option<redis::Value> = l2
        .query(
            "acl",
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("app")
                .arg("on")
                .arg(">app-secret")
                .arg("~*")
                .arg("&*")
                .arg("+@all")
                .clone(),
        )
        .await;
    assert!(created.is_some());
    let mut app = settings(&redis.url(), "ca.crt");
    app.username = Some("app".into());
    app.password = Some("app-secret".into());
    check(&app.client().unwrap(), Duration::from_secs(2))
        .await
        .expect("ACL user app");
    app.password = Some("wrong".into());
    check(&app.client().unwrap(), Duration::from_secs(2))
        .await
        .expect_err("a wrong password");
}
