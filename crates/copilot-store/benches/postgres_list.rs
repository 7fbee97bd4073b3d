//! Keyset pagination at scale (DESIGN.md 3.7: "the cost of fetching page N does not grow with N"):
//! 1,000,000 conversations in one tenant, generated in SQL; the first page against a page
//! 900,000 rows deep, for a service (no access filter) and for a member (filter in the query).
//!
//!     COPILOT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!         cargo bench -p copilot-store --bench postgres_list
//!
//! The database `copilot_bench_1m` is created and filled once, then reused.

use std::time::Duration;

use chrono::{DateTime, Utc};
use copilot_domain::conversation::{ConversationQuery, ConversationStatus, ListViewer};
use copilot_domain::cursor::ListCursor;
use copilot_domain::{ConversationId, TenantId, UserId};
use copilot_store::{ConversationStore, PostgresOptions, PostgresStore};
use criterion::{Criterion, criterion_group, criterion_main};
use sqlx::{Connection, PgConnection};

const ROWS: i64 = 1_000_000;
const DEEP: i64 = 900_000;

async fn prepare(admin: &str) -> PostgresStore {
    let mut conn = PgConnection::connect(admin).await.expect("connect");
    let exists: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = 'copilot_bench_1m'")
            .fetch_optional(&mut conn)
            .await
            .expect("query");
    if exists.is_none() {
        sqlx::query("CREATE DATABASE copilot_bench_1m")
            .execute(&mut conn)
            .await
            .expect("create database");
    }
    let (base, _) = admin.rsplit_once('/').expect("database in URL");
    let store = PostgresStore::open(PostgresOptions::new(format!("{base}/copilot_bench_1m")))
        .await
        .expect("open");
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM copilot.conversations WHERE tenant_id = 'bench'")
            .fetch_one(store.pool())
            .await
            .expect("count");
    if count < ROWS {
        eprintln!("generating {ROWS} conversations (once)...");
        sqlx::query("DELETE FROM copilot.conversations WHERE tenant_id = 'bench'")
            .execute(store.pool())
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO copilot.conversations (id, tenant_id, user_id, share_audience, tenant_access, created_at,
                 updated_at, last_message_at, message_count, last_seq, version)
             SELECT gen_random_uuid(), 'bench', 'user-' || (g % 100),
                 CASE WHEN g % 3 = 0 THEN 'tenant' ELSE 'private' END, 'view',
                 timestamptz '2026-01-01' + g * interval '1 second',
                 timestamptz '2026-01-01' + g * interval '1 second',
                 CASE WHEN g % 2 = 0 THEN timestamptz '2026-01-01' + (g + 500) * interval '1 second' END,
                 0, 0, nextval('copilot.version_seq')
             FROM generate_series(1, $1) AS g",
        )
        .bind(ROWS)
        .execute(store.pool())
        .await
        .expect("generate");
        sqlx::query("ANALYZE copilot.conversations")
            .execute(store.pool())
            .await
            .unwrap();
    }
    store
}

async fn deep_cursor(store: &PostgresStore) -> ListCursor {
    let (at, id): (DateTime<Utc>, uuid::Uuid) = sqlx::query_as(
        "SELECT coalesce(last_message_at, created_at), id FROM copilot.conversations WHERE tenant_id = 'bench'
         ORDER BY coalesce(last_message_at, created_at) DESC, id DESC OFFSET $1 LIMIT 1",
    )
    .bind(DEEP)
    .fetch_one(store.pool())
    .await
    .expect("deep row");
    ListCursor {
        status: ConversationStatus::Active,
        last_activity_micros: at.timestamp_micros(),
        id: ConversationId::from_uuid(id),
    }
}

fn bench(c: &mut Criterion) {
    let Ok(admin) = std::env::var("COPILOT_BENCH_POSTGRES_URL") else {
        eprintln!("set COPILOT_BENCH_POSTGRES_URL to run this benchmark");
        return;
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = rt.block_on(prepare(&admin));
    let deep = rt.block_on(deep_cursor(&store));
    let tenant = TenantId::parse("bench").unwrap();
    let member = ListViewer::User(UserId::parse("user-7").unwrap());
    let query = |viewer: ListViewer, after: Option<ListCursor>| {
        ConversationQuery::new(
            tenant.clone(),
            viewer,
            ConversationStatus::Active,
            Some(20),
            after,
        )
        .unwrap()
    };
    let cases = [
        ("service/first_page", query(ListViewer::Everyone, None)),
        (
            "service/page_at_900k",
            query(ListViewer::Everyone, Some(deep)),
        ),
        ("member/first_page", query(member.clone(), None)),
        ("member/page_at_900k", query(member, Some(deep))),
    ];
    let mut group = c.benchmark_group("postgres_list_1m");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);
    for (name, q) in &cases {
        let page = rt.block_on(store.list_conversations(q)).expect("page");
        assert_eq!(page.items.len(), 20, "{name}: a full page");
        group.bench_function(*name, |b| {
            b.to_async(&rt)
                .iter(|| async { store.list_conversations(q).await.unwrap() })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
