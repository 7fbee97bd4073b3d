//! Message append on PostgreSQL against `pgbench` inserting one similar row per transaction, at
//! the same concurrency (CONCURRENCY tasks / clients, each on its own conversation) for
//! SECONDS each. The append is the whole write, one statement: lock the conversation, next
//! `seq`, insert the message, take a version, record the change; its `NOTIFY` is sent after the
//! commit, batched with others by the store's notifier. It runs with announcements (as the
//! service does) and without, to show what they cost, and pgbench runs the service's own append statement too, to tell the Rust client's
//! cost from the schema's (three rows and their indexes against one).
//! Last line: ratio=<appends per second (with NOTIFY) / pgbench inserts per second>.
//!
//!     COPILOT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!       PGBENCH=/usr/lib/postgresql/15/bin/pgbench cargo bench -p copilot-store --bench postgres_append

use std::sync::Arc;
use std::time::{Duration, Instant};

use copilot_domain::conversation::{
    MessageRole, NewConversation, NewMessage, ShareAudience, TenantAccess,
};
use copilot_domain::{TenantId, UserId};
use copilot_store::{ConversationStore, PostgresOptions, PostgresStore};
use sqlx::{Connection, PgConnection};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn fresh_database(admin: &str, name: &str) -> String {
    let mut conn = PgConnection::connect(admin).await.expect("connect");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .expect("drop");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create");
    let (base, _) = admin.rsplit_once('/').expect("database in URL");
    format!("{base}/{name}")
}

async fn appends_per_second(url: &str, notify: bool, tasks: u64, seconds: u64) -> f64 {
    let mut options = PostgresOptions::new(url);
    options.notify_changes = notify;
    options.record_changes = true;
    options.max_connections = tasks as u32 + 2;
    let store = Arc::new(PostgresStore::open(options).await.expect("open"));
    store.migrate().await.expect("migrate");
    let tenant = TenantId::parse("bench").unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        let tenant = tenant.clone();
        handles.push(tokio::spawn(async move {
            let user = UserId::parse(&format!("user-{t}")).unwrap();
            let conversation = store
                .create_conversation(&NewConversation {
                    tenant_id: tenant.clone(),
                    user_id: Some(user.clone()),
                    title: None,
                    persona_id: None,
                    jurisdictions: Vec::new(),
                    share_audience: ShareAudience::Private,
                    tenant_access: TenantAccess::View,
                })
                .await
                .expect("create");
            let message = NewMessage {
                role: MessageRole::User,
                content: "x".repeat(200),
                metadata: serde_json::Map::new(),
                author_id: Some(user),
            };
            let mut done = 0u64;
            while Instant::now() < deadline {
                store
                    .append_message(&tenant, &conversation.id, &message)
                    .await
                    .expect("append");
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await.expect("task");
    }
    store.close().await;
    total as f64 / started.elapsed().as_secs_f64()
}

/// The single-row insert the append is judged against.
const PGBENCH_INSERT: &str =
    "INSERT INTO bench_messages (conversation_id, seq, role, content, metadata)
     VALUES (gen_random_uuid(), :client_id, 'user', repeat('x', 200), '{}');\n";

/// The service's append statement (same rows, indexes and change-log row), run by
/// pgbench on a conversation per client: the ceiling of this schema's append, with no Rust
/// client in the way.
const PGBENCH_APPEND: &str = "WITH upd AS (
    UPDATE copilot.conversations
       SET last_seq = last_seq + 1, last_message_at = GREATEST(now(), last_message_at),
           updated_at = GREATEST(now(), last_message_at), message_count = message_count + 1,
           version = nextval('copilot.version_seq')
     WHERE id = ('00000000-0000-4000-8000-' || lpad(:client_id::text, 12, '0'))::uuid
       AND tenant_id = 'pgbench' AND archived_at IS NULL
     RETURNING id, tenant_id, last_seq, last_message_at, version
  ), ins AS (
    INSERT INTO copilot.conversation_messages
        (id, conversation_id, tenant_id, seq, role, content, metadata, author_id, created_at)
    SELECT gen_random_uuid(), upd.id, upd.tenant_id, upd.last_seq, 'user', repeat('x', 200),
           '{}', 'pgbench', upd.last_message_at FROM upd RETURNING id
  ), c AS (
    INSERT INTO copilot.changes (kind, tenant_id, subject, version, created_at)
    SELECT 'conversation', 'pgbench', upd.id::text, upd.version, now() FROM upd
  )
  SELECT upd.version FROM upd CROSS JOIN ins;\n";

fn pgbench_per_second(url: &str, clients: u64, seconds: u64, name: &str, sql: &str) -> f64 {
    let dir = std::env::temp_dir().join(format!("copilot-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let script = dir.join(format!("{name}.sql"));
    std::fs::write(&script, sql).expect("script");
    let pgbench = std::env::var("PGBENCH").unwrap_or_else(|_| "pgbench".into());
    let out = std::process::Command::new(pgbench)
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .arg("-f")
        .arg(&script)
        .arg(url)
        .output()
        .expect("pgbench (set PGBENCH to its path)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| {
            panic!(
                "pgbench printed no tps: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn main() {
    let Ok(admin) = std::env::var("COPILOT_BENCH_POSTGRES_URL") else {
        eprintln!("COPILOT_BENCH_POSTGRES_URL is not set: skipping");
        return;
    };
    let tasks = env_number("CONCURRENCY", 16);
    let seconds = env_number("SECONDS", 8);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (with_notify, without_notify, url) = rt.block_on(async {
        let url = fresh_database(&admin, "copilot_bench_append").await;
        let with_notify = appends_per_second(&url, true, tasks, seconds).await;
        let without_notify = appends_per_second(&url, false, tasks, seconds).await;
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        sqlx::query(
            "CREATE TABLE bench_messages (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                conversation_id uuid NOT NULL, seq bigint NOT NULL, role text NOT NULL,
                content text NOT NULL, metadata jsonb NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut conn)
        .await
        .expect("table");
        sqlx::query(&format!(
            "INSERT INTO copilot.conversations (id, tenant_id, share_audience, tenant_access,
                 created_at, updated_at, version)
             SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, 'pgbench',
                 'private', 'view', now(), now(), 1 FROM generate_series(0, {tasks}) AS i"
        ))
        .execute(&mut conn)
        .await
        .expect("pgbench conversations");
        (with_notify, without_notify, url)
    });
    let pgbench = pgbench_per_second(&url, tasks, seconds, "insert", PGBENCH_INSERT);
    let pgbench_append = pgbench_per_second(&url, tasks, seconds, "append", PGBENCH_APPEND);
    println!("concurrency {tasks}, {seconds} s each:");
    println!("  append (service path, NOTIFY on):  {with_notify:>8.0} /s");
    println!("  append (NOTIFY off):               {without_notify:>8.0} /s");
    println!("  pgbench single-row INSERT:         {pgbench:>8.0} /s");
    println!("  pgbench, the append statement:     {pgbench_append:>8.0} /s");
    println!(
        "client cost: {:.3} (append / the same statement from pgbench)",
        with_notify / pgbench_append
    );
    println!(
        "notify cost: {:.3} (on / off)",
        with_notify / without_notify
    );
    println!("ratio={:.3}", with_notify / pgbench);
}
