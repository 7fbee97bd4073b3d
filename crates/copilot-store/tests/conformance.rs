//! The conformance suite against the memory and SQLite backends.

mod memory {
    use std::sync::Arc;

    use copilot_store::{MemoryStore, StoreSet};

    async fn make() -> StoreSet {
        StoreSet::from_backend(Arc::new(MemoryStore::default().recording_changes()))
    }

    copilot_store::conformance_suite!(make);
}

mod sqlite {
    use std::sync::Arc;

    use copilot_store::{SqliteOptions, SqliteStore, StoreSet};

    /// A fresh database file per test; the directory is leaked for the test's lifetime (the
    /// process exits right after) so the file outlives every connection.
    async fn make() -> StoreSet {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        let url = format!("sqlite://{}/test.db", dir.display());
        let store = SqliteStore::open(SqliteOptions {
            record_changes: true,
            ..SqliteOptions::new(url)
        })
        .await
        .expect("open sqlite");
        StoreSet::from_backend(Arc::new(store))
    }

    copilot_store::conformance_suite!(make);
}

mod postgres {
    use std::sync::Arc;

    use copilot_store::conformance::fresh_postgres_database;
    use copilot_store::{PostgresOptions, PostgresStore, StoreSet};

    /// A fresh database per test, from the migrated template (`None`: PostgreSQL not configured).
    async fn make() -> Option<StoreSet> {
        let url = fresh_postgres_database().await;
        // Generous acquire timeout: the whole suite runs in parallel on two cores.
        let store = PostgresStore::open(PostgresOptions {
            record_changes: true,
            acquire_timeout: std::time::Duration::from_secs(10),
            ..PostgresOptions::new(url)
        })
        .await
        .expect("open postgres");
        Some(StoreSet::from_backend(Arc::new(store)))
    }

    copilot_store::conformance_suite!(optional make);
}

/// TLS to PostgreSQL (`ssl=on` with a throw-away CA made by the test script, a server
/// certificate for `localhost` only): `sslmode=verify-full` connects encrypted; a server whose
/// name or issuer does not match is refused at once. The whole suite over TLS runs as the
/// script's TLS pass (`COPILOT_TEST_POSTGRES_URL` with `sslmode=verify-full`).
mod postgres_tls {
    use std::time::{Duration, Instant};

    use copilot_store::conformance::{fresh_postgres_database, test_service};
    use copilot_store::{PostgresOptions, PostgresStore};
    use sqlx::{Connection, PgConnection};

    /// `url` (any form the script set) pointed at `host` with `sslmode` and `ca`.
    fn tls_url(url: &str, host: &str, sslmode: &str, ca: &str) -> String {
        let without_query = url.split('?').next().unwrap_or(url);
        let (_, rest) = without_query.split_once('@').expect("user@host in URL");
        let (authority, database) = rest.split_once('/').expect("database in URL");
        let port = authority.rsplit_once(':').expect("port in URL").1;
        let dir = test_service("COPILOT_TEST_TLS_DIR");
        format!(
            "postgres://postgres@{host}:{port}/{database}?sslmode={sslmode}&sslrootcert={dir}/{ca}"
        )
    }

    async fn open(url: &str) -> Result<PostgresStore, copilot_store::StoreError> {
        PostgresStore::open(PostgresOptions {
            acquire_timeout: Duration::from_secs(5),
            ..PostgresOptions::new(url.to_owned())
        })
        .await
    }

    #[tokio::test]
    async fn verify_full_connects_encrypted() {
        let url = tls_url(
            &fresh_postgres_database().await,
            "localhost",
            "verify-full",
            "ca.crt",
        );
        let store = open(&url).await.expect("verify-full to localhost");
        store.migrate().await.expect("migrations over TLS");
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        let (encrypted,): (bool,) =
            sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert!(encrypted, "the connection is not encrypted");
    }

    #[tokio::test]
    async fn a_server_whose_certificate_does_not_match_is_refused() {
        let database = fresh_postgres_database().await;
        // The certificate names localhost, not 127.0.0.1; and the other CA signed nothing here.
        for (host, sslmode, ca, why) in [
            ("127.0.0.1", "verify-full", "ca.crt", "name mismatch"),
            ("localhost", "verify-ca", "other-ca.crt", "unknown issuer"),
            ("localhost", "verify-full", "other-ca.crt", "unknown issuer"),
        ] {
            let started = Instant::now();
            let result = open(&tls_url(&database, host, sslmode, ca)).await;
            let error = result.err().unwrap_or_else(|| panic!("{why}: connected"));
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{why}: took {:?}",
                started.elapsed()
            );
            assert!(
                error.to_string().to_lowercase().contains("certificate")
                    || error.to_string().to_lowercase().contains("tls"),
                "{why}: {error}"
            );
        }
        // The right CA is accepted under verify-ca too. (sqlx 0.8.6 with rustls >= 0.23.24 also
        // checks the name under verify-ca, sqlx issue #3793: stricter, never looser; see
        // docs/deploy.md.)
        open(&tls_url(&database, "localhost", "verify-ca", "ca.crt"))
            .await
            .expect("verify-ca to localhost");
    }
}

/// The whole suite again through PgBouncer in transaction mode, with the documented setting
/// (`transaction_pooler`).
mod postgres_pgbouncer {
    use std::sync::Arc;

    use copilot_store::conformance::fresh_postgres_database;
    use copilot_store::{PostgresOptions, PostgresStore, StoreSet};

    async fn make() -> Option<StoreSet> {
        let direct = fresh_postgres_database().await;
        let bouncer = copilot_store::conformance::test_service("COPILOT_TEST_PGBOUNCER_URL");
        let (_, database) = direct.rsplit_once('/').expect("database in URL");
        let mut options = PostgresOptions::new(format!("{bouncer}/{database}"));
        options.transaction_pooler = true;
        options.record_changes = true;
        options.acquire_timeout = std::time::Duration::from_secs(10);
        let store = PostgresStore::connect_lazy(options).expect("pool");
        Some(StoreSet::from_backend(Arc::new(store)))
    }

    copilot_store::conformance_suite!(optional make);
}

/// What only the PostgreSQL backend can show: row-level security, query plans, rows on disk.
mod postgres_specific {
    use copilot_domain::config::{ConfigLevel, ConfigPatch};
    use copilot_domain::conversation::{MessageRole, NewMessage, ShareAudience, TenantAccess};
    use copilot_domain::policy::TenantLlmPolicy;
    use copilot_domain::{TenantId, UserId};
    use copilot_store::conformance::{fresh_postgres_database, new_conversation};
    use copilot_store::{
        ConfigStore, ConversationStore, PolicyStore, PostgresOptions, PostgresStore,
    };
    use serde_json::json;
    use sqlx::{Connection, PgConnection};

    async fn store() -> Option<(PostgresStore, String)> {
        let url = fresh_postgres_database().await;
        Some((
            PostgresStore::open(PostgresOptions::new(url.clone()))
                .await
                .expect("open"),
            url,
        ))
    }

    /// With every pooled connection busy, a read gives up at its (short) deadline and answers
    /// `Unavailable` at once, while a write waits up to its own (the store deadline) and goes
    /// through when a connection frees: a burst of slow commits delays writes, never fails them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_wait_for_a_connection_longer_than_reads() {
        use std::time::{Duration, Instant};
        let url = fresh_postgres_database().await;
        let store = PostgresStore::open(PostgresOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_millis(100),
            write_acquire_timeout: Some(Duration::from_secs(5)),
            ..PostgresOptions::new(url)
        })
        .await
        .expect("open");
        let tenant = TenantId::parse("pool").unwrap();
        let held = store.pool().acquire().await.expect("the only connection");
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            drop(held);
        });
        let started = Instant::now();
        let read = store.get_policy(&tenant).await;
        assert!(
            matches!(read, Err(copilot_store::StoreError::Unavailable(_))),
            "{read:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        let policy = TenantLlmPolicy::from_json(
            &json!({"defaultModel": "m", "defaultProvider": "openai"}),
            &tenant,
        )
        .unwrap();
        store
            .put_policy(&policy, None, "svc")
            .await
            .expect("the write waited for the connection");
        assert!(started.elapsed() >= Duration::from_millis(500));
        release.await.unwrap();
    }

    /// Every committed write is announced once, after its commit (by the store's notifier, not
    /// in the writing transaction), and before a heartbeat sent after it; a write that failed
    /// announces nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_writes_are_announced_after_commit_and_failed_ones_never() {
        use copilot_store::{ChangeFeed, ChangeSubject, Notice};
        use std::time::Duration;
        let url = fresh_postgres_database().await;
        let store = PostgresStore::open(PostgresOptions {
            notify_changes: true,
            ..PostgresOptions::new(url)
        })
        .await
        .expect("open");
        let feed = store.change_feed(None).expect("feed");
        let mut stream = feed.listen().await.expect("listen");
        let tenant = TenantId::parse("announced").unwrap();
        let policy = TenantLlmPolicy::from_json(
            &json!({"defaultModel": "m", "defaultProvider": "openai"}),
            &tenant,
        )
        .unwrap();
        let stored = store.put_policy(&policy, None, "svc").await.unwrap();
        let conversation = store
            .create_conversation(&new_conversation(
                &tenant,
                Some("alice"),
                ShareAudience::Private,
                TenantAccess::View,
            ))
            .await
            .unwrap();
        let appended = store
            .append_message(
                &tenant,
                &conversation.id,
                &NewMessage {
                    role: MessageRole::User,
                    content: "hi".into(),
                    metadata: Default::default(),
                    author_id: None,
                },
            )
            .await
            .unwrap();
        let stale = store
            .put_policy(&policy, Some(stored.version + 100), "svc")
            .await;
        assert!(stale.is_err(), "{stale:?}");
        feed.heartbeat("after").await.unwrap();

        let mut heard = Vec::new();
        loop {
            let notice = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .expect("the heartbeat came back")
                .expect("the session lasted");
            match notice {
                Notice::Heartbeat(token) if token == "after" => break,
                Notice::Heartbeat(_) => {}
                Notice::Changed { subject, version } => heard.push((subject, version)),
            }
        }
        let subject = ChangeSubject::Conversation(tenant.clone(), conversation.id);
        assert_eq!(
            heard,
            vec![
                (ChangeSubject::Policy(tenant.clone()), stored.version),
                (subject.clone(), conversation.version),
                (subject, appended.conversation.version),
            ],
            "each committed write once, in commit order; the failed write not at all"
        );
    }

    async fn count(conn: &mut PgConnection, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM copilot.{table}"))
            .fetch_one(conn)
            .await
            .unwrap()
    }

    /// A session as `authenticated` with tenant A's claims sees no row of tenant B, and no
    /// colleague's private conversation or its messages; `service_role` sees all.
    #[tokio::test]
    async fn row_level_security_isolates_tenants_and_private_conversations() {
        let Some((store, url)) = store().await else {
            return;
        };
        let a = TenantId::parse("tenant-a").unwrap();
        let b = TenantId::parse("tenant-b").unwrap();
        let message = |content: &str| NewMessage {
            role: MessageRole::User,
            content: content.into(),
            metadata: Default::default(),
            author_id: None,
        };
        let mut ids = Vec::new();
        for (tenant, owner, audience) in [
            (&a, Some("alice"), ShareAudience::Private),
            (&a, Some("bob"), ShareAudience::Private),
            (&a, Some("bob"), ShareAudience::Tenant),
            (&a, None, ShareAudience::Private),
            (&b, Some("alice"), ShareAudience::Public),
        ] {
            let c = store
                .create_conversation(&new_conversation(
                    tenant,
                    owner,
                    audience,
                    TenantAccess::View,
                ))
                .await
                .unwrap();
            store
                .append_message(tenant, &c.id, &message("m"))
                .await
                .unwrap();
            ids.push(c.id);
        }
        for t in [&a, &b] {
            let p = TenantLlmPolicy::from_json(
                &json!({"defaultModel": "m", "defaultProvider": "p"}),
                t,
            )
            .unwrap();
            store.put_policy(&p, None, "admin").await.unwrap();
            store
                .put_patch(
                    &ConfigLevel::Tenant(t.clone()),
                    &ConfigPatch::default(),
                    None,
                    "admin",
                )
                .await
                .unwrap();
        }
        store
            .put_patch(&ConfigLevel::Global, &ConfigPatch::default(), None, "svc")
            .await
            .unwrap();
        let bob_level = ConfigLevel::User(a.clone(), UserId::parse("bob").unwrap());
        store
            .put_patch(&bob_level, &ConfigPatch::default(), None, "bob")
            .await
            .unwrap();

        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::query("SET ROLE authenticated")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("SELECT set_config('request.jwt.claims', $1, false)")
            .bind(
                json!({"sub": "alice", "role": "authenticated", "tenant_id": "tenant-a"})
                    .to_string(),
            )
            .execute(&mut conn)
            .await
            .unwrap();
        let visible: Vec<uuid::Uuid> =
            sqlx::query_scalar("SELECT id FROM copilot.conversations ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let mut want = vec![*ids[0].as_uuid(), *ids[2].as_uuid(), *ids[3].as_uuid()];
        want.sort();
        assert_eq!(
            visible, want,
            "alice: her private one, the tenant-shared one, the system one"
        );
        let tenants: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT tenant_id FROM copilot.conversation_messages")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        assert_eq!(tenants, ["tenant-a"]);
        assert_eq!(
            count(&mut conn, "conversation_messages").await,
            3,
            "no message of bob's private conversation"
        );
        assert_eq!(count(&mut conn, "tenant_llm_policies").await, 1);
        assert_eq!(
            count(&mut conn, "conversation_configs").await,
            2,
            "global and tenant-a; not bob's level"
        );

        // Claims in app_metadata (Supabase style) work the same.
        sqlx::query("SELECT set_config('request.jwt.claims', $1, false)")
            .bind(json!({"sub": "carol", "role": "authenticated", "app_metadata": {"tenant_id": "tenant-b"}}).to_string())
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(count(&mut conn, "conversations").await, 1);
        // No claims at all: nothing.
        sqlx::query("SELECT set_config('request.jwt.claims', '', false)")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(count(&mut conn, "conversations").await, 0);
        assert_eq!(count(&mut conn, "tenant_llm_policies").await, 0);

        sqlx::query("RESET ROLE").execute(&mut conn).await.unwrap();
        sqlx::query("SET ROLE service_role")
            .execute(&mut conn)
            .await
            .unwrap();
        assert_eq!(count(&mut conn, "conversations").await, 5);
        assert_eq!(count(&mut conn, "conversation_messages").await, 5);
        assert_eq!(count(&mut conn, "conversation_configs").await, 4);
    }

    /// DESIGN.md section 9, item 4, on disk: one global row, one per tenant and per user.
    #[tokio::test]
    async fn regression_04_config_rows_are_never_duplicated() {
        let Some((store, url)) = store().await else {
            return;
        };
        let t = TenantId::parse("acme").unwrap();
        let u = UserId::parse("u1").unwrap();
        let p = ConfigPatch::from_json(&json!({"pathMaxMessages": 3})).unwrap();
        for _ in 0..5 {
            for level in [
                ConfigLevel::Global,
                ConfigLevel::Tenant(t.clone()),
                ConfigLevel::User(t.clone(), u.clone()),
            ] {
                store.put_patch(&level, &p, None, "w").await.unwrap();
                store
                    .merge_patch(&level, &json!({"mergeMaxMessages": 4}), None, "w")
                    .await
                    .unwrap();
            }
        }
        let mut conn = PgConnection::connect(&url).await.unwrap();
        assert_eq!(count(&mut conn, "conversation_configs").await, 3);
        // The database itself refuses a second global row.
        let dup = sqlx::query("INSERT INTO copilot.conversation_configs (tenant_id, user_id, patch, version, updated_at, updated_by) VALUES (NULL, NULL, '{}', 0, now(), 'x')")
            .execute(&mut conn)
            .await;
        assert!(
            dup.is_err(),
            "NULLS NOT DISTINCT must refuse a duplicate global row"
        );
    }

    /// The list query is served by the index that matches its keyset order: no sort node.
    #[tokio::test]
    async fn the_list_query_uses_the_keyset_index() {
        use copilot_domain::conversation::{ConversationQuery, ConversationStatus, ListViewer};
        let Some((store, url)) = store().await else {
            return;
        };
        // Enough rows (three tenants, a mix of owners, sharing and activity) that the planner
        // picks the index on its own: no `enable_seqscan = off`.
        let mut conn = PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO copilot.conversations
                 (id, tenant_id, user_id, share_audience, tenant_access, jurisdictions, created_at, updated_at,
                  last_message_at, message_count, version)
             SELECT gen_random_uuid(), 't' || (i % 3), 'u' || (i % 50),
                    CASE WHEN i % 3 = 0 THEN 'tenant' ELSE 'private' END, 'view', '{}',
                    now() - i * interval '1 second', now(),
                    CASE WHEN i % 2 = 0 THEN now() - i * interval '1 second' END, 0, i
             FROM generate_series(1, 30000) AS i;
             ANALYZE copilot.conversations;",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let tenant = TenantId::parse("t1").unwrap();
        let some = store
            .list_conversations(
                &ConversationQuery::new(
                    tenant.clone(),
                    ListViewer::Everyone,
                    ConversationStatus::Active,
                    Some(20),
                    None,
                )
                .unwrap(),
            )
            .await
            .unwrap();
        let after = some.items[19].cursor(ConversationStatus::Active);
        for viewer in [
            ListViewer::Everyone,
            ListViewer::User(UserId::parse("u7").unwrap()),
        ] {
            for cursor in [None, Some(after)] {
                let query = ConversationQuery::new(
                    tenant.clone(),
                    viewer.clone(),
                    ConversationStatus::Active,
                    Some(20),
                    cursor,
                )
                .unwrap();
                let plan = store.explain_list(&query).await.unwrap().join("\n");
                assert!(plan.contains("conversations_list"), "{viewer:?}: {plan}");
                assert!(
                    !plan.contains("Sort"),
                    "the index must give the order ({viewer:?}): {plan}"
                );
            }
        }
    }

    /// The seq is assigned under the conversation's row lock and unique in the table too.
    #[tokio::test]
    async fn duplicate_seq_is_refused_by_the_database() {
        let Some((store, url)) = store().await else {
            return;
        };
        let t = TenantId::parse("acme").unwrap();
        let c = store
            .create_conversation(&new_conversation(
                &t,
                Some("u"),
                ShareAudience::Private,
                TenantAccess::View,
            ))
            .await
            .unwrap();
        let m = NewMessage {
            role: MessageRole::User,
            content: "x".into(),
            metadata: Default::default(),
            author_id: None,
        };
        store.append_message(&t, &c.id, &m).await.unwrap();
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let dup = sqlx::query("INSERT INTO copilot.conversation_messages (id, conversation_id, tenant_id, seq, role, created_at) VALUES (gen_random_uuid(), $1, 'acme', 1, 'user', now())")
            .bind(c.id.as_uuid())
            .execute(&mut conn)
            .await;
        assert!(dup.is_err());
    }
}

/// What only the SQLite backend can show: rows on disk, query plans, two handles on one file.
mod sqlite_specific {
    use std::sync::Arc;

    use copilot_domain::config::{ConfigLevel, ConfigPatch};
    use copilot_domain::conversation::{MessageRole, NewMessage, ShareAudience, TenantAccess};
    use copilot_domain::{TenantId, UserId};
    use copilot_store::conformance::{fresh_tenant, new_conversation};
    use copilot_store::{ConfigStore, ConversationStore, SqliteOptions, SqliteStore};
    use serde_json::json;

    async fn open(url: &str) -> SqliteStore {
        SqliteStore::open(SqliteOptions {
            record_changes: true,
            ..SqliteOptions::new(url)
        })
        .await
        .expect("open sqlite")
    }

    fn temp_url() -> String {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        format!("sqlite://{}/test.db", dir.display())
    }

    /// DESIGN.md section 9, item 4, on disk: exactly one global row and one row per tenant/user.
    #[tokio::test]
    async fn regression_04_config_rows_are_never_duplicated() {
        let store = open(&temp_url()).await;
        let t = fresh_tenant();
        let u = UserId::parse("u1").unwrap();
        let p = ConfigPatch::from_json(&json!({"pathMaxMessages": 3})).unwrap();
        for _ in 0..5 {
            for level in [
                ConfigLevel::Global,
                ConfigLevel::Tenant(t.clone()),
                ConfigLevel::User(t.clone(), u.clone()),
            ] {
                store.put_patch(&level, &p, None, "w").await.unwrap();
                store
                    .merge_patch(&level, &json!({"mergeMaxMessages": 4}), None, "w")
                    .await
                    .unwrap();
            }
        }
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM conversation_configs")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(rows, 3);
    }

    #[tokio::test]
    async fn migrations_are_idempotent_and_data_persists() {
        let url = temp_url();
        let t = TenantId::parse("acme").unwrap();
        let id = {
            let store = open(&url).await;
            let c = store
                .create_conversation(&new_conversation(
                    &t,
                    Some("u"),
                    ShareAudience::Private,
                    TenantAccess::View,
                ))
                .await
                .unwrap();
            store.close().await;
            c.id
        };
        let store = open(&url).await;
        store.migrate().await.unwrap();
        assert!(store.get_conversation(&t, &id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn the_list_query_uses_the_keyset_index() {
        let store = open(&temp_url()).await;
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "EXPLAIN QUERY PLAN SELECT id FROM conversations WHERE tenant_id = 'a'
             AND (user_id IS NULL OR user_id = 'u' OR share_audience <> 'private') AND archived_at IS NULL
             AND (last_activity_at, id) < (1, 'x') ORDER BY last_activity_at DESC, id DESC LIMIT 21",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        let detail = rows
            .iter()
            .map(|r| r.3.clone())
            .collect::<Vec<_>>()
            .join(" | ");
        assert!(detail.contains("conversations_list"), "plan: {detail}");
        assert!(
            !detail.contains("TEMP B-TREE"),
            "the index must give the order, no sort: {detail}"
        );
    }

    /// Two handles on one file (as two processes would have) appending concurrently: the
    /// `BEGIN IMMEDIATE` writers wait for each other instead of failing or repeating a seq.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_handles_on_one_file_append_without_repeating_seq() {
        let url = temp_url();
        let a = Arc::new(open(&url).await);
        let b = Arc::new(open(&url).await);
        let t = fresh_tenant();
        let c = a
            .create_conversation(&new_conversation(
                &t,
                Some("u"),
                ShareAudience::Private,
                TenantAccess::View,
            ))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for (i, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
            .into_iter()
            .enumerate()
        {
            let (t, id) = (t.clone(), c.id);
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for j in 0..50 {
                    let m = NewMessage {
                        role: MessageRole::User,
                        content: format!("{i}-{j}"),
                        metadata: Default::default(),
                        author_id: None,
                    };
                    seqs.push(
                        store
                            .append_message(&t, &id, &m)
                            .await
                            .expect("append")
                            .message
                            .seq,
                    );
                }
                seqs
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all.sort_unstable();
        assert_eq!(all, (1..=200).collect::<Vec<u64>>());
    }
}

/// Migrations on databases as they are met in production (issue "Tests that cannot pass by
/// accident"): an older schema that holds data, two instances starting at once, a pooler.
mod migrations {
    use std::sync::Arc;

    use copilot_domain::TenantId;
    use copilot_domain::config::ConfigLevel;
    use copilot_store::conformance::test_service;
    use copilot_store::{
        ConfigStore, ConversationStore, PolicyStore, PostgresOptions, PostgresStore,
    };
    use sqlx::{Connection, PgConnection};

    /// A new, empty database (not from the migrated template).
    async fn empty_database() -> String {
        let admin = test_service("COPILOT_TEST_POSTGRES_URL");
        let name = format!("copilot_empty_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .unwrap();
        copilot_store::conformance::with_database(&admin, &name)
    }

    /// A database at the first migration that holds rows of its tables, then upgraded by the
    /// service: every row is still there and readable, and writes work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upgrading_a_database_that_holds_data_keeps_it() {
        let url = empty_database().await;
        let mut conn = PgConnection::connect(&url).await.unwrap();
        let store = PostgresStore::connect_lazy(PostgresOptions::new(url.clone())).unwrap();
        let applied = store.migrate().await.unwrap();
        assert!(
            applied.len() >= 2,
            "an empty database gets every migration: {applied:?}"
        );
        // Now the real case: an N-1 database with data. Roll the newest migration's effects
        // back (drop its objects and its bookkeeping row), put rows in, upgrade again.
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS copilot.changes; DELETE FROM copilot._sqlx_migrations WHERE version = 2",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let tenant = TenantId::parse("upgraded").unwrap();
        sqlx::raw_sql(
            "INSERT INTO copilot.tenant_llm_policies (tenant_id, document, version, updated_at, updated_by)
             VALUES ('upgraded', '{\"tenantId\":\"upgraded\",\"defaultModel\":\"kept\",\"defaultProvider\":\"openai\",\"allowRemoteEgress\":true,\"tasks\":[]}', nextval('copilot.version_seq'), now(), 'old');
             INSERT INTO copilot.conversation_configs (tenant_id, user_id, patch, version, updated_at, updated_by)
             VALUES ('upgraded', NULL, '{\"mergeMaxMessages\": 9}', nextval('copilot.version_seq'), now(), 'old');",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let store =
            Arc::new(PostgresStore::connect_lazy(PostgresOptions::new(url.clone())).unwrap());
        let applied = store.migrate().await.unwrap();
        assert_eq!(applied.len(), 1, "only the missing migration: {applied:?}");
        let policy = store.get_policy(&tenant).await.unwrap().expect("kept");
        assert_eq!(policy.policy.default_model, "kept");
        let level = store
            .get_patch(&ConfigLevel::Tenant(tenant.clone()))
            .await
            .unwrap()
            .expect("kept");
        assert_eq!(level.patch.merge_max_messages, Some(9));
        let created = store
            .create_conversation(&copilot_store::conformance::new_conversation(
                &tenant,
                Some("u1"),
                copilot_domain::conversation::ShareAudience::Private,
                copilot_domain::conversation::TenantAccess::View,
            ))
            .await
            .unwrap();
        assert!(
            created.version > level.version && level.version > policy.version,
            "versions continue above the old rows'"
        );
    }

    /// Two instances start at once against an unmigrated database: one migrates, the other
    /// waits; neither fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_starting_at_once_both_succeed() {
        let url = empty_database().await;
        let (a, b) = tokio::join!(
            PostgresStore::open(PostgresOptions::new(url.clone())),
            PostgresStore::open(PostgresOptions::new(url.clone())),
        );
        a.expect("first instance");
        b.expect("second instance");
    }

    /// Through a transaction-mode pooler, a database with pending migrations is refused with a
    /// message that says to use the direct URL; an up-to-date one opens.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrate_through_a_transaction_pooler_refuses_and_says_why() {
        let url = empty_database().await;
        let bouncer = test_service("COPILOT_TEST_PGBOUNCER_URL");
        let (_, database) = url.rsplit_once('/').unwrap();
        let through = |url: String| {
            let mut options = PostgresOptions::new(url);
            options.transaction_pooler = true;
            options
        };
        let err = PostgresStore::open(through(format!("{bouncer}/{database}")))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("direct URL"), "{err}");
        PostgresStore::open(PostgresOptions::new(url.clone()))
            .await
            .expect("direct");
        PostgresStore::open(through(format!("{bouncer}/{database}")))
            .await
            .expect("up to date: opens through the pooler");
    }
}
