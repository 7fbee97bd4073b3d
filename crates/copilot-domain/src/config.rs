//! The conversation-configuration hierarchy (DESIGN.md 3.4): sparse patches at three levels,
//! merged field by field over the defaults: defaults <- global <- tenant <- user.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Errors, InputError};
use crate::id::{TenantId, UserId};
use crate::json::{READ_ONLY_FIELDS, as_object, parse_value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MergeCompressionStrategy {
    None,
    Minimal,
    Moderate,
    Aggressive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PathCompressionStrategy {
    None,
    SlidingWindow,
    Semantic,
    Hybrid,
}

/// Where one level's patch lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConfigLevel {
    Global,
    Tenant(TenantId),
    User(TenantId, UserId),
}

impl ConfigLevel {
    pub fn source(&self) -> ConfigSource {
        match self {
            Self::Global => ConfigSource::Global,
            Self::Tenant(_) => ConfigSource::Tenant,
            Self::User(..) => ConfigSource::User,
        }
    }
}

/// Which level an effective value came from. Ordered from least to most specific.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ConfigSource {
    Default,
    Global,
    Tenant,
    User,
}

fn in_range_u32(min: u32, max: u32) -> impl Fn(&u32) -> Result<(), String> {
    move |v| {
        if (min..=max).contains(v) {
            Ok(())
        } else {
            Err(format!("must be an integer between {min} and {max}"))
        }
    }
}

fn no_check<T>(_: &T) -> Result<(), String> {
    Ok(())
}

fn unit_interval(v: &f64) -> Result<(), String> {
    if (0.0..=1.0).contains(v) {
        Ok(())
    } else {
        Err("must be a number between 0 and 1".into())
    }
}

/// Declares the config fields once; generates the sparse patch, the full values, the sources,
/// parsing with one error per field, and the field-by-field merge.
macro_rules! config_fields {
    ($( $name:ident : $ty:ty = $json:literal, default $default:expr, check $check:expr
        $(, schema($($schema:tt)*))?; )+) => {
        /// One level's stored fields: absent means "inherit from the level below".
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "camelCase")]
        pub struct ConfigPatch {
            $( #[serde(default, skip_serializing_if = "Option::is_none")] pub $name: Option<$ty>, )+
        }

        // The request schema of a level's PUT and PATCH; `ConfigPatch::from_json` parses it.
        #[cfg(feature = "openapi")]
        crate::json::document_input_schema! {
            /// A config level's fields: absent inherits from the level below; in a merge patch,
            /// `null` clears a field. `version`, `updatedAt` and `updatedBy` are read-only and
            /// ignored.
            #[schema(example = json!({"mergeMaxMessages": 80, "pathMaxMessages": 500, "autoCompactEnabled": true}))]
            ConfigPatchInput {
                $( $( #[schema($($schema)*)] )? $name: Option<$ty>, )+
            }
        }

        /// Every field, resolved.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "camelCase")]
        pub struct ConfigValues {
            $( pub $name: $ty, )+
        }

        /// For every field, the level its effective value came from.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "camelCase")]
        pub struct ConfigSources {
            $( pub $name: ConfigSource, )+
        }

        /// The JSON names of every config field.
        pub const CONFIG_FIELDS: &[&str] = &[$($json),+];

        impl Default for ConfigValues {
            fn default() -> Self {
                Self { $( $name: $default, )+ }
            }
        }

        impl ConfigPatch {
            /// Number of fields this patch sets.
            pub fn len(&self) -> usize {
                0 $( + usize::from(self.$name.is_some()) )+
            }

            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// Parses a stored-fields object: `null` means absent; unknown fields and bad values
            /// are reported one per field.
            pub fn from_map(map: &Map<String, Value>) -> Result<Self, InputError> {
                let mut errors = Errors::default();
                let mut patch = Self::default();
                for (key, value) in map {
                    match key.as_str() {
                        $( $json => {
                            if !value.is_null() {
                                if let Some(v) = parse_value::<$ty>(value, key, &mut errors) {
                                    match ($check)(&v) {
                                        Ok(()) => patch.$name = Some(v),
                                        Err(message) => errors.push(key.as_str(), message),
                                    }
                                }
                            }
                        } )+
                        _ => errors.push(key.as_str(), "unknown field"),
                    }
                }
                errors.check()?;
                Ok(patch)
            }
        }

        impl ConfigPatch {
            /// This patch laid over `lower`: fields set here win, the others come from `lower`.
            pub fn over(&self, lower: &ConfigPatch) -> ConfigPatch {
                ConfigPatch { $( $name: self.$name.clone().or_else(|| lower.$name.clone()), )+ }
            }
        }

        fn apply_level(values: &mut ConfigValues, sources: &mut ConfigSources, patch: &ConfigPatch, source: ConfigSource) {
            $( if let Some(v) = &patch.$name { values.$name = v.clone(); sources.$name = source; } )+
        }

        impl ConfigSources {
            fn all(source: ConfigSource) -> Self {
                Self { $( $name: source, )+ }
            }

            fn iter(&self) -> impl Iterator<Item = ConfigSource> + '_ {
                [$( self.$name, )+].into_iter()
            }
        }
    };
}

config_fields! {
    merge_compression_strategy: MergeCompressionStrategy = "mergeCompressionStrategy",
        default MergeCompressionStrategy::Moderate, check no_check;
    merge_max_messages: u32 = "mergeMaxMessages", default 100, check in_range_u32(1, 100_000),
        schema(minimum = 1, maximum = 100000);
    merge_preserve_pinned: bool = "mergePreservePinned", default true, check no_check;
    path_compression_strategy: PathCompressionStrategy = "pathCompressionStrategy",
        default PathCompressionStrategy::SlidingWindow, check no_check;
    path_max_messages: u32 = "pathMaxMessages", default 200, check in_range_u32(1, 100_000),
        schema(minimum = 1, maximum = 100000);
    path_sliding_window_size: u32 = "pathSlidingWindowSize", default 50, check in_range_u32(1, 10_000),
        schema(minimum = 1, maximum = 10000);
    path_compression_threshold: f64 = "pathCompressionThreshold", default 0.85, check unit_interval,
        schema(minimum = 0, maximum = 1);
    auto_compact_enabled: bool = "autoCompactEnabled", default true, check no_check;
    compaction_interval_minutes: u32 = "compactionIntervalMinutes", default 60,
        check in_range_u32(1, 10_080), schema(minimum = 1, maximum = 10080);
}

impl ConfigPatch {
    /// Parses the body of a `PUT` of a level (the whole new patch).
    pub fn from_json(body: &Value) -> Result<Self, InputError> {
        let mut errors = Errors::default();
        let Some(map) = as_object(body, "", &mut errors) else {
            return Err(errors.into_error());
        };
        Self::from_map(&without_read_only(map))
    }

    /// Applies a JSON merge patch (RFC 7396) to this patch: fields given are set, a field given
    /// as `null` is cleared (inherits again), others keep their value. Config values are
    /// scalars, so the recursive case of RFC 7396 never arises.
    pub fn merge(&self, merge_patch: &Value) -> Result<Self, InputError> {
        let mut errors = Errors::default();
        let Some(changes) = as_object(merge_patch, "", &mut errors) else {
            return Err(errors.into_error());
        };
        let mut merged = match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        for (key, value) in without_read_only(changes) {
            if !CONFIG_FIELDS.contains(&key.as_str()) {
                errors.push(key, "unknown field");
            } else if value.is_null() {
                merged.remove(&key);
            } else {
                merged.insert(key, value);
            }
        }
        match (errors.check(), Self::from_map(&merged)) {
            (Ok(()), result) => result,
            (Err(InputError::Invalid(mut unknown)), Err(InputError::Invalid(invalid))) => {
                unknown.extend(invalid);
                Err(InputError::Invalid(unknown))
            }
            (Err(e), _) => Err(e),
        }
    }
}

fn without_read_only(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !READ_ONLY_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A level's patch as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredPatch {
    pub level: ConfigLevel,
    pub patch: ConfigPatch,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// The JSON of `GET` on a level: stored fields at the top level plus version and audit fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StoredPatchView {
    #[serde(flatten)]
    pub patch: ConfigPatch,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl StoredPatchView {
    /// Back to a stored patch of `level`.
    pub fn into_stored(self, level: ConfigLevel) -> StoredPatch {
        StoredPatch {
            level,
            patch: self.patch,
            version: self.version,
            updated_at: self.updated_at,
            updated_by: self.updated_by,
        }
    }
}

impl StoredPatch {
    pub fn view(&self) -> StoredPatchView {
        StoredPatchView {
            patch: self.patch.clone(),
            version: self.version,
            updated_at: self.updated_at,
            updated_by: self.updated_by.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LevelVersions {
    pub global: Option<u64>,
    pub tenant: Option<u64>,
    pub user: Option<u64>,
}

/// The effective configuration of a user (or of a tenant when no user is given).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EffectiveConfig {
    pub tenant_id: TenantId,
    pub user_id: Option<UserId>,
    #[serde(flatten)]
    pub values: ConfigValues,
    pub sources: ConfigSources,
    /// The most specific level that has a stored patch (`default` when none has).
    pub config_level: ConfigSource,
    /// Of the newest patch that contributed a value; `None` when only defaults apply.
    pub updated_at: Option<DateTime<Utc>>,
    pub updated_by: Option<String>,
    pub versions: LevelVersions,
}

/// What the merge needs of a stored level: a [`StoredPatch`] or its JSON view.
pub trait PatchRecord {
    fn patch(&self) -> &ConfigPatch;
    fn version(&self) -> u64;
    fn updated_at(&self) -> DateTime<Utc>;
    fn updated_by(&self) -> &str;
}

macro_rules! patch_record {
    ($ty:ty) => {
        impl PatchRecord for $ty {
            fn patch(&self) -> &ConfigPatch {
                &self.patch
            }
            fn version(&self) -> u64 {
                self.version
            }
            fn updated_at(&self) -> DateTime<Utc> {
                self.updated_at
            }
            fn updated_by(&self) -> &str {
                &self.updated_by
            }
        }
    };
}

patch_record!(StoredPatch);
patch_record!(StoredPatchView);

/// Merges the stored patches of the three levels field by field (DESIGN.md 3.4).
pub fn effective_config<P: PatchRecord>(
    tenant: &TenantId,
    user: Option<&UserId>,
    global: Option<&P>,
    tenant_patch: Option<&P>,
    user_patch: Option<&P>,
) -> EffectiveConfig {
    let mut values = ConfigValues::default();
    let mut sources = ConfigSources::all(ConfigSource::Default);
    let levels = [
        (ConfigSource::Global, global),
        (ConfigSource::Tenant, tenant_patch),
        (ConfigSource::User, user_patch),
    ];
    for (source, stored) in levels {
        if let Some(stored) = stored {
            apply_level(&mut values, &mut sources, stored.patch(), source);
        }
    }
    let config_level = levels
        .iter()
        .rev()
        .find(|(_, stored)| stored.is_some())
        .map_or(ConfigSource::Default, |(source, _)| *source);
    let newest_contributor = levels
        .iter()
        .filter(|(source, _)| sources.iter().any(|s| s == *source))
        .filter_map(|(_, stored)| *stored)
        .max_by_key(|stored| (stored.updated_at(), stored.version()));
    EffectiveConfig {
        tenant_id: tenant.clone(),
        user_id: user.cloned(),
        values,
        sources,
        config_level,
        updated_at: newest_contributor.map(|s| s.updated_at()),
        updated_by: newest_contributor.map(|s| s.updated_by().to_owned()),
        versions: LevelVersions {
            global: global.map(|s| s.version()),
            tenant: tenant_patch.map(|s| s.version()),
            user: user_patch.map(|s| s.version()),
        },
    }
}

#[cfg(test)]
mod tests;
