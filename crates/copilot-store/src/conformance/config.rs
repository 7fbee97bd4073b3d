use copilot_domain::config::{ConfigLevel, ConfigPatch, ConfigSource, LevelVersions};
use serde_json::json;

use super::{fresh_tenant, user};
use crate::{StoreError, StoreSet};

fn patch(doc: serde_json::Value) -> ConfigPatch {
    ConfigPatch::from_json(&doc).expect("valid patch")
}

pub async fn config_levels_round_trip(s: &StoreSet) {
    let t = fresh_tenant();
    let levels = [
        ConfigLevel::Global,
        ConfigLevel::Tenant(t.clone()),
        ConfigLevel::User(t.clone(), user("u1")),
    ];
    for (i, level) in levels.iter().enumerate() {
        assert!(s.configs.get_patch(level).await.unwrap().is_none());
        let p = patch(json!({"mergeMaxMessages": 10 + i}));
        let stored = s
            .configs
            .put_patch(level, &p, None, "writer")
            .await
            .unwrap();
        assert_eq!(&stored.level, level);
        let read = s.configs.get_patch(level).await.unwrap().expect("stored");
        assert_eq!(read, stored);
        assert_eq!(read.patch, p);
    }
    // Another user of the tenant has no patch of its own.
    assert!(
        s.configs
            .get_patch(&ConfigLevel::User(t, user("u2")))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn config_merge_patch_sets_clears_and_creates(s: &StoreSet) {
    let level = ConfigLevel::Tenant(fresh_tenant());
    // Merge on a level with no patch creates it.
    let created = s
        .configs
        .merge_patch(
            &level,
            &json!({"pathMaxMessages": 5, "autoCompactEnabled": false}),
            None,
            "w",
        )
        .await
        .unwrap();
    assert_eq!(
        created.patch,
        patch(json!({"pathMaxMessages": 5, "autoCompactEnabled": false}))
    );
    let merged = s
        .configs
        .merge_patch(
            &level,
            &json!({"pathMaxMessages": null, "mergeMaxMessages": 3}),
            Some(created.version),
            "w",
        )
        .await
        .unwrap();
    assert_eq!(
        merged.patch,
        patch(json!({"autoCompactEnabled": false, "mergeMaxMessages": 3}))
    );
    assert!(merged.version > created.version);
    // Invalid values are refused and nothing is written.
    let err = s
        .configs
        .merge_patch(
            &level,
            &json!({"mergeMaxMessages": 0, "bogus": 1}),
            None,
            "w",
        )
        .await
        .unwrap_err();
    match err {
        StoreError::Invalid(e) => assert_eq!(e.field_errors().len(), 2),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(s.configs.get_patch(&level).await.unwrap().unwrap(), merged);
    // Clearing the last field leaves an empty patch that still exists.
    let emptied = s
        .configs
        .merge_patch(
            &level,
            &json!({"autoCompactEnabled": null, "mergeMaxMessages": null}),
            None,
            "w",
        )
        .await
        .unwrap();
    assert!(emptied.patch.is_empty());
    assert!(s.configs.get_patch(&level).await.unwrap().is_some());
}

pub async fn config_expected_versions_and_delete(s: &StoreSet) {
    let level = ConfigLevel::User(fresh_tenant(), user("u1"));
    let p = patch(json!({"pathSlidingWindowSize": 9}));
    assert!(matches!(
        s.configs.put_patch(&level, &p, Some(7), "w").await,
        Err(StoreError::VersionConflict { current: None })
    ));
    assert!(matches!(
        s.configs.delete_patch(&level, None).await,
        Err(StoreError::NotFound)
    ));
    let v1 = s
        .configs
        .put_patch(&level, &p, None, "w")
        .await
        .unwrap()
        .version;
    assert!(matches!(
        s.configs.put_patch(&level, &p, Some(v1 + 1000), "w").await,
        Err(StoreError::VersionConflict { .. })
    ));
    assert!(matches!(
        s.configs
            .merge_patch(&level, &json!({}), Some(v1 + 1000), "w")
            .await,
        Err(StoreError::VersionConflict { .. })
    ));
    assert!(matches!(
        s.configs.delete_patch(&level, Some(v1 + 1000)).await,
        Err(StoreError::VersionConflict { .. })
    ));
    let deleted = s.configs.delete_patch(&level, Some(v1)).await.unwrap();
    assert!(deleted > v1);
    assert!(s.configs.get_patch(&level).await.unwrap().is_none());
    let v2 = s
        .configs
        .put_patch(&level, &p, None, "w")
        .await
        .unwrap()
        .version;
    assert!(v2 > deleted);
}

pub async fn config_effective_with_all_some_and_no_levels(s: &StoreSet) {
    let t = fresh_tenant();
    let u = user("u1");
    // None: defaults only, never "now".
    let e = s.configs.get_effective(&t, Some(&u)).await.unwrap();
    assert_eq!(e.config_level, ConfigSource::Default);
    assert_eq!((e.updated_at, e.updated_by.as_deref()), (None, None));
    assert_eq!(e.values.merge_max_messages, 100);
    assert_eq!(e.versions, LevelVersions::default());

    // Some: global and user.
    let g = s
        .configs
        .put_patch(
            &ConfigLevel::Global,
            &patch(json!({"mergeMaxMessages": 11, "pathMaxMessages": 12})),
            None,
            "svc",
        )
        .await
        .unwrap();
    let up = s
        .configs
        .put_patch(
            &ConfigLevel::User(t.clone(), u.clone()),
            &patch(json!({"pathMaxMessages": 13})),
            None,
            "u1",
        )
        .await
        .unwrap();
    let e = s.configs.get_effective(&t, Some(&u)).await.unwrap();
    assert_eq!(
        (e.values.merge_max_messages, e.sources.merge_max_messages),
        (11, ConfigSource::Global)
    );
    assert_eq!(
        (e.values.path_max_messages, e.sources.path_max_messages),
        (13, ConfigSource::User)
    );
    assert_eq!(e.config_level, ConfigSource::User);
    assert_eq!(
        e.versions,
        LevelVersions {
            global: Some(g.version),
            tenant: None,
            user: Some(up.version)
        }
    );
    assert_eq!(e.updated_at, Some(up.updated_at));
    assert_eq!(e.updated_by.as_deref(), Some("u1"));

    // All three.
    let tp = s
        .configs
        .put_patch(
            &ConfigLevel::Tenant(t.clone()),
            &patch(json!({"pathMaxMessages": 14, "autoCompactEnabled": false})),
            None,
            "admin",
        )
        .await
        .unwrap();
    let e = s.configs.get_effective(&t, Some(&u)).await.unwrap();
    assert_eq!(
        (e.values.path_max_messages, e.sources.path_max_messages),
        (13, ConfigSource::User)
    );
    assert_eq!(
        (
            e.values.auto_compact_enabled,
            e.sources.auto_compact_enabled
        ),
        (false, ConfigSource::Tenant)
    );
    assert_eq!(
        e.versions,
        LevelVersions {
            global: Some(g.version),
            tenant: Some(tp.version),
            user: Some(up.version)
        }
    );
    // Another user of the tenant sees global and tenant only.
    let other = s
        .configs
        .get_effective(&t, Some(&user("u2")))
        .await
        .unwrap();
    assert_eq!(
        (
            other.values.path_max_messages,
            other.sources.path_max_messages
        ),
        (14, ConfigSource::Tenant)
    );
    assert_eq!(other.config_level, ConfigSource::Tenant);
    assert_eq!(other.updated_by.as_deref(), Some("admin"));
    // A user of another tenant sees global only.
    let stranger = s
        .configs
        .get_effective(&fresh_tenant(), Some(&u))
        .await
        .unwrap();
    assert_eq!(stranger.config_level, ConfigSource::Global);
    assert_eq!(stranger.values.path_max_messages, 12);
}

/// DESIGN.md section 9, item 4: a stored null overwrote inherited values, the global level
/// could not be stored, and tenant-level saves inserted duplicate rows.
pub async fn regression_04_config_inheritance(s: &StoreSet) {
    let t = fresh_tenant();
    let u = user("u1");
    let tenant_level = ConfigLevel::Tenant(t.clone());
    // The global level can be stored and read back.
    s.configs
        .put_patch(
            &ConfigLevel::Global,
            &patch(json!({"mergeMaxMessages": 40})),
            None,
            "svc",
        )
        .await
        .unwrap();
    assert!(
        s.configs
            .get_patch(&ConfigLevel::Global)
            .await
            .unwrap()
            .is_some()
    );
    // A null at the tenant level inherits the global value.
    s.configs
        .put_patch(
            &tenant_level,
            &patch(json!({"mergeMaxMessages": null, "pathMaxMessages": 9})),
            None,
            "a",
        )
        .await
        .unwrap();
    let e = s.configs.get_effective(&t, Some(&u)).await.unwrap();
    assert_eq!(
        (e.values.merge_max_messages, e.sources.merge_max_messages),
        (40, ConfigSource::Global)
    );
    // Many saves of the same levels keep one row each: one delete removes the level entirely.
    for i in 1..=5u32 {
        s.configs
            .put_patch(
                &ConfigLevel::Global,
                &patch(json!({"pathMaxMessages": i})),
                None,
                "svc",
            )
            .await
            .unwrap();
        s.configs
            .put_patch(
                &tenant_level,
                &patch(json!({"pathMaxMessages": 10 + i})),
                None,
                "a",
            )
            .await
            .unwrap();
        s.configs
            .merge_patch(
                &tenant_level,
                &json!({"mergeMaxMessages": 20 + i}),
                None,
                "a",
            )
            .await
            .unwrap();
    }
    let e = s.configs.get_effective(&t, Some(&u)).await.unwrap();
    assert_eq!(
        (e.values.path_max_messages, e.values.merge_max_messages),
        (15, 25)
    );
    s.configs.delete_patch(&tenant_level, None).await.unwrap();
    assert!(
        s.configs.get_patch(&tenant_level).await.unwrap().is_none(),
        "a duplicate row survived the delete"
    );
    s.configs
        .delete_patch(&ConfigLevel::Global, None)
        .await
        .unwrap();
    assert!(
        s.configs
            .get_patch(&ConfigLevel::Global)
            .await
            .unwrap()
            .is_none(),
        "a duplicate global row survived"
    );
    let e = s.configs.get_effective(&t, Some(&u)).await.unwrap();
    assert_eq!(e.config_level, ConfigSource::Default);
}

/// Concurrent merge patches of one level, the first of which creates it, all land: none is
/// lost to another (each sets a different field).
pub async fn config_concurrent_merges_all_land(s: &StoreSet) {
    let level = ConfigLevel::User(fresh_tenant(), user("u1"));
    let changes = [
        json!({"mergeCompressionStrategy": "minimal"}),
        json!({"mergeMaxMessages": 2}),
        json!({"mergePreservePinned": false}),
        json!({"pathCompressionStrategy": "hybrid"}),
        json!({"pathMaxMessages": 5}),
        json!({"pathSlidingWindowSize": 6}),
        json!({"pathCompressionThreshold": 0.5}),
        json!({"autoCompactEnabled": false}),
        json!({"compactionIntervalMinutes": 9}),
    ];
    let mut tasks = Vec::new();
    for change in changes {
        let (configs, level) = (s.configs.clone(), level.clone());
        tasks.push(tokio::spawn(async move {
            configs
                .merge_patch(&level, &change, None, "w")
                .await
                .map(|p| p.version)
        }));
    }
    for task in tasks {
        task.await.expect("task").expect("merge");
    }
    let stored = s
        .configs
        .get_patch(&level)
        .await
        .unwrap()
        .expect("level exists");
    assert_eq!(
        stored.patch.len(),
        9,
        "a concurrent merge was lost: {:?}",
        stored.patch
    );
}
