//! The conformance suite against the memory and SQLite backends.

mod memory {
    use std::sync::Arc;

    use copilot_store::{MemoryStore, StoreSet};

    async fn make() -> StoreSet {
        StoreSet::from_backend(Arc::new(MemoryStore::default()))
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
        let store = SqliteStore::open(SqliteOptions::new(url))
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
        let url = fresh_postgres_database().await?;
        let store = PostgresStore::open(PostgresOptions::new(url))
            .await
            .expect("open postgres");
        Some(StoreSet::from_backend(Arc::new(store)))
    }

    copilot_store::conformance_suite!(optional make);
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
        SqliteStore::open(SqliteOptions::new(url))
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
