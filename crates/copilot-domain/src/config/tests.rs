use chrono::{Duration, Utc};
use proptest::prelude::*;
use serde_json::json;

use super::*;

fn tenant() -> TenantId {
    TenantId::parse("t1").unwrap()
}

fn user() -> UserId {
    UserId::parse("u1").unwrap()
}

fn stored(level: ConfigLevel, patch: ConfigPatch, version: u64, age_secs: i64) -> StoredPatch {
    StoredPatch {
        level,
        patch,
        version,
        updated_at: crate::clock::truncate_to_micros(Utc::now() - Duration::seconds(age_secs)),
        updated_by: format!("writer-{version}"),
    }
}

#[test]
fn only_defaults() {
    let e = effective_config::<StoredPatch>(&tenant(), Some(&user()), None, None, None);
    assert_eq!(e.values, ConfigValues::default());
    assert_eq!(e.config_level, ConfigSource::Default);
    assert_eq!(e.updated_at, None);
    assert_eq!(e.updated_by, None);
    assert_eq!(e.versions, LevelVersions::default());
    assert!(e.sources.iter().all(|s| s == ConfigSource::Default));
}

#[test]
fn field_by_field_with_sources_and_newest_contributor() {
    let global = stored(
        ConfigLevel::Global,
        ConfigPatch::from_json(&json!({"mergeMaxMessages": 10, "pathMaxMessages": 20})).unwrap(),
        1,
        30,
    );
    let tenant_p = stored(
        ConfigLevel::Tenant(tenant()),
        ConfigPatch::from_json(&json!({"pathMaxMessages": 30})).unwrap(),
        2,
        20,
    );
    let user_p = stored(
        ConfigLevel::User(tenant(), user()),
        ConfigPatch::from_json(&json!({"autoCompactEnabled": false})).unwrap(),
        3,
        10,
    );
    let e = effective_config(
        &tenant(),
        Some(&user()),
        Some(&global),
        Some(&tenant_p),
        Some(&user_p),
    );
    assert_eq!(e.values.merge_max_messages, 10);
    assert_eq!(e.sources.merge_max_messages, ConfigSource::Global);
    assert_eq!(e.values.path_max_messages, 30);
    assert_eq!(e.sources.path_max_messages, ConfigSource::Tenant);
    assert!(!e.values.auto_compact_enabled);
    assert_eq!(e.sources.auto_compact_enabled, ConfigSource::User);
    assert_eq!(e.values.path_sliding_window_size, 50);
    assert_eq!(e.sources.path_sliding_window_size, ConfigSource::Default);
    assert_eq!(e.config_level, ConfigSource::User);
    assert_eq!(e.updated_by.as_deref(), Some("writer-3"));
    assert_eq!(
        e.versions,
        LevelVersions {
            global: Some(1),
            tenant: Some(2),
            user: Some(3)
        }
    );

    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["pathMaxMessages"], 30);
    assert_eq!(json["sources"]["pathMaxMessages"], "tenant");
    assert_eq!(json["configLevel"], "user");
    assert_eq!(json["pathCompressionStrategy"], "sliding_window");
}

#[test]
fn an_empty_stored_patch_counts_for_level_but_not_for_updated_at() {
    let global = stored(
        ConfigLevel::Global,
        ConfigPatch::from_json(&json!({"mergeMaxMessages": 5})).unwrap(),
        1,
        60,
    );
    let user_p = stored(
        ConfigLevel::User(tenant(), user()),
        ConfigPatch::default(),
        9,
        1,
    );
    let e = effective_config(&tenant(), Some(&user()), Some(&global), None, Some(&user_p));
    assert_eq!(e.config_level, ConfigSource::User);
    assert_eq!(e.updated_by.as_deref(), Some("writer-1"));
    assert_eq!(e.versions.user, Some(9));
}

/// DESIGN.md section 9, item 4 (domain half): a stored null must not overwrite an inherited value.
#[test]
fn regression_04_config_inheritance_null_inherits() {
    let patch =
        ConfigPatch::from_json(&json!({"mergeMaxMessages": null, "pathMaxMessages": 7})).unwrap();
    assert_eq!(patch.merge_max_messages, None);
    let global = stored(
        ConfigLevel::Global,
        ConfigPatch::from_json(&json!({"mergeMaxMessages": 42})).unwrap(),
        1,
        5,
    );
    let tenant_p = stored(ConfigLevel::Tenant(tenant()), patch, 2, 1);
    let e = effective_config(&tenant(), None, Some(&global), Some(&tenant_p), None);
    assert_eq!(e.values.merge_max_messages, 42);
    assert_eq!(e.sources.merge_max_messages, ConfigSource::Global);
}

#[test]
fn validation_reports_each_bad_field() {
    let err = ConfigPatch::from_json(&json!({
        "mergeMaxMessages": 0,
        "pathCompressionThreshold": 1.5,
        "pathCompressionStrategy": "zip",
        "autoCompactEnabled": "yes",
        "compactionIntervalMinutes": 10081,
        "typo": 1
    }))
    .unwrap_err();
    let mut fields: Vec<_> = err.field_errors().iter().map(|e| e.field.clone()).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "autoCompactEnabled",
            "compactionIntervalMinutes",
            "mergeMaxMessages",
            "pathCompressionStrategy",
            "pathCompressionThreshold",
            "typo"
        ]
    );
    assert!(ConfigPatch::from_json(&json!({"mergeMaxMessages": 1.5})).is_err());
    assert!(ConfigPatch::from_json(&json!("x")).is_err());
}

#[test]
fn merge_patch_sets_clears_and_keeps() {
    let base =
        ConfigPatch::from_json(&json!({"mergeMaxMessages": 5, "pathMaxMessages": 6})).unwrap();
    let merged = base
        .merge(&json!({"mergeMaxMessages": null, "autoCompactEnabled": false, "version": 3}))
        .unwrap();
    assert_eq!(merged.merge_max_messages, None);
    assert_eq!(merged.path_max_messages, Some(6));
    assert_eq!(merged.auto_compact_enabled, Some(false));
    let err = base
        .merge(&json!({"nope": null, "pathMaxMessages": 0}))
        .unwrap_err();
    assert_eq!(err.field_errors().len(), 2);
}

#[test]
fn stored_patch_view_has_fields_at_top_level() {
    let s = stored(
        ConfigLevel::Global,
        ConfigPatch::from_json(&json!({"pathMaxMessages": 9})).unwrap(),
        4,
        0,
    );
    let json = serde_json::to_value(s.view()).unwrap();
    assert_eq!(json["pathMaxMessages"], 9);
    assert_eq!(json["version"], 4);
    assert!(json.get("mergeMaxMessages").is_none());
}

fn arb_patch() -> impl Strategy<Value = ConfigPatch> {
    (
        proptest::option::of(prop_oneof![
            Just(MergeCompressionStrategy::None),
            Just(MergeCompressionStrategy::Minimal),
            Just(MergeCompressionStrategy::Moderate),
            Just(MergeCompressionStrategy::Aggressive)
        ]),
        proptest::option::of(1u32..=100_000),
        proptest::option::of(any::<bool>()),
        proptest::option::of(prop_oneof![
            Just(PathCompressionStrategy::None),
            Just(PathCompressionStrategy::SlidingWindow),
            Just(PathCompressionStrategy::Semantic),
            Just(PathCompressionStrategy::Hybrid)
        ]),
        proptest::option::of(1u32..=100_000),
        proptest::option::of(1u32..=10_000),
        proptest::option::of(0.0f64..=1.0),
        proptest::option::of(any::<bool>()),
        proptest::option::of(1u32..=10_080),
    )
        .prop_map(|(a, b, c, d, e, f, g, h, i)| ConfigPatch {
            merge_compression_strategy: a,
            merge_max_messages: b,
            merge_preserve_pinned: c,
            path_compression_strategy: d,
            path_max_messages: e,
            path_sliding_window_size: f,
            path_compression_threshold: g,
            auto_compact_enabled: h,
            compaction_interval_minutes: i,
        })
}

fn values_of(patch: &ConfigPatch) -> ConfigValues {
    let s = stored(ConfigLevel::Global, patch.clone(), 1, 0);
    effective_config(&tenant(), None, Some(&s), None, None).values
}

proptest! {
    /// The three-level merge equals laying the patches over each other in order.
    #[test]
    fn merge_of_levels_equals_applying_patches_in_order(g in arb_patch(), t in arb_patch(), u in arb_patch()) {
        let e = effective_config(
            &tenant(), Some(&user()),
            Some(&stored(ConfigLevel::Global, g.clone(), 1, 3)),
            Some(&stored(ConfigLevel::Tenant(tenant()), t.clone(), 2, 2)),
            Some(&stored(ConfigLevel::User(tenant(), user()), u.clone(), 3, 1)),
        );
        prop_assert_eq!(e.values, values_of(&u.over(&t.over(&g))));
    }

    /// Applying a merge patch with only values set equals laying it over the stored patch.
    #[test]
    fn json_merge_patch_equals_overlay(base in arb_patch(), change in arb_patch()) {
        let merged = base.merge(&serde_json::to_value(&change).unwrap()).unwrap();
        prop_assert_eq!(merged, change.over(&base));
    }

    /// Clearing a field at the user level restores the value of the levels below.
    #[test]
    fn clearing_a_field_restores_the_lower_value(g in arb_patch(), t in arb_patch(), u in arb_patch(), field in 0..CONFIG_FIELDS.len()) {
        let name = CONFIG_FIELDS[field];
        let cleared = u.merge(&json!({ name: null })).unwrap();
        let with_user = |p: &ConfigPatch| effective_config(
            &tenant(), Some(&user()),
            Some(&stored(ConfigLevel::Global, g.clone(), 1, 3)),
            Some(&stored(ConfigLevel::Tenant(tenant()), t.clone(), 2, 2)),
            Some(&stored(ConfigLevel::User(tenant(), user()), p.clone(), 3, 1)),
        );
        let without_user = effective_config(
            &tenant(), Some(&user()),
            Some(&stored(ConfigLevel::Global, g.clone(), 1, 3)),
            Some(&stored(ConfigLevel::Tenant(tenant()), t.clone(), 2, 2)),
            None,
        );
        let after = serde_json::to_value(with_user(&cleared)).unwrap();
        let lower = serde_json::to_value(&without_user).unwrap();
        prop_assert_eq!(&after[name], &lower[name]);
        prop_assert_eq!(&after["sources"][name], &lower["sources"][name]);
    }
}
