//! The tenant LLM routing policy (DESIGN.md 3.2) and its validation.

use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::egress::EgressMode;
use crate::error::{Errors, InputError};
use crate::id::{TenantId, UserId, is_valid_external_id};
use crate::json::{Fields, as_object, char_len_between, document_object, reject_unknown};

/// A whole policy document may be at most this large (HTTP 413 above).
pub const MAX_POLICY_BYTES: usize = 1 << 20;
pub const MAX_TASKS: usize = 256;
pub const MAX_USER_POLICIES: usize = 10_000;

/// One policy per tenant: which model and provider to use, per task, and how strictly
/// outbound data is guarded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TenantLlmPolicy {
    pub tenant_id: TenantId,
    pub default_model: String,
    pub default_provider: String,
    pub allow_remote_egress: bool,
    pub tasks: Vec<LlmTaskPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_mode: Option<EgressMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_off_mode: Option<bool>,
    #[serde(default)]
    pub user_policies: BTreeMap<UserId, UserEgressPolicy>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LlmTaskPolicy {
    pub task: String,
    pub model: String,
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct UserEgressPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_mode: Option<EgressMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_off_mode: Option<bool>,
}

/// The fields of a policy document as sent, declared once: the parser's list of known fields
/// (`POLICY_INPUT_FIELDS`, for `TenantLlmPolicy::from_json`) and the request schema
/// (`PolicyInput`) come from this one list.
macro_rules! policy_input {
    ($( $(#[$attr:meta])* $name:ident = $json:literal : $ty:ty ),+ $(,)?) => {
        const POLICY_INPUT_FIELDS: &[&str] = &[$($json),+];

        #[cfg(feature = "openapi")]
        crate::json::document_input_schema! {
            /// A tenant LLM policy to store. `version`, `updatedAt` and `updatedBy` may be sent
            /// back and are ignored; any other unknown field is refused.
            #[schema(example = json!({"defaultModel": "gpt-4o-mini", "defaultProvider": "openai", "tasks": [{"task": "summarize", "model": "claude-haiku", "provider": "anthropic", "temperature": 0.2}], "egressMode": "audit"}))]
            PolicyInput { $( $(#[$attr])* $name: $ty, )+ }
        }
    };
}

policy_input! {
    /// Must equal the tenant in the path when given.
    tenant_id = "tenantId": Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    default_model = "defaultModel": String,
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    default_provider = "defaultProvider": String,
    /// Default true; false means only the local provider may be used.
    allow_remote_egress = "allowRemoteEgress": Option<bool>,
    #[schema(max_items = 256)]
    tasks = "tasks": Option<Vec<LlmTaskPolicy>>,
    egress_mode = "egressMode": Option<crate::egress::EgressModeInput>,
    allow_off_mode = "allowOffMode": Option<bool>,
    user_policies = "userPolicies": Option<BTreeMap<String, UserEgressPolicy>>,
}

/// A policy as stored: the document plus the fields the store sets on every write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct StoredPolicy {
    #[serde(flatten)]
    pub policy: TenantLlmPolicy,
    pub version: u64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

impl TenantLlmPolicy {
    pub fn task(&self, name: &str) -> Option<&LlmTaskPolicy> {
        self.tasks.iter().find(|t| t.task == name)
    }

    /// Parses and validates a policy document sent for tenant `path_tenant`, reporting one error
    /// per bad field. Unknown fields are refused (a typo must not silently do nothing); the
    /// read-only `version`, `updatedAt` and `updatedBy` are accepted and ignored so a document
    /// read with GET can be sent back with PUT.
    pub fn from_json(body: &Value, path_tenant: &TenantId) -> Result<Self, InputError> {
        let (map, mut errors) = document_object(body, POLICY_INPUT_FIELDS)?;
        match map.get("tenantId") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == path_tenant.as_str() => {}
            Some(Value::String(t)) if !is_valid_external_id(t) => {
                errors.push("tenantId", "must be 1-128 characters of [A-Za-z0-9._:@-]")
            }
            Some(_) => errors.push("tenantId", "must equal the tenant in the path"),
        }
        let default_model: Option<String> = map.required("defaultModel", &mut errors);
        if let Some(m) = &default_model {
            check_model(m, "defaultModel", &mut errors);
        }
        let default_provider: Option<String> = map.required("defaultProvider", &mut errors);
        if let Some(p) = &default_provider {
            check_provider(p, "defaultProvider", &mut errors);
        }
        let allow_remote_egress: bool = map
            .optional("allowRemoteEgress", &mut errors)
            .unwrap_or(true);
        let egress_mode = optional_egress(map, "egressMode", &mut errors);
        let allow_off_mode: Option<bool> = map.optional("allowOffMode", &mut errors);
        let tasks = parse_tasks(map.get("tasks"), &mut errors);
        let user_policies = parse_user_policies(map.get("userPolicies"), &mut errors);

        errors.check()?;
        // A missing required field was reported above, so both are present here.
        let (Some(default_model), Some(default_provider)) = (default_model, default_provider)
        else {
            return Err(InputError::field("defaultModel", "is required"));
        };
        Ok(Self {
            tenant_id: path_tenant.clone(),
            default_model,
            default_provider,
            allow_remote_egress,
            tasks,
            egress_mode,
            allow_off_mode,
            user_policies,
        })
    }
}

fn check_model(model: &str, field: &str, errors: &mut Errors) {
    if !char_len_between(model, 1, 200) {
        errors.push(field, "must be 1-200 characters");
    }
}

pub fn is_valid_provider(provider: &str) -> bool {
    (1..=64).contains(&provider.len())
        && provider
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn check_provider(provider: &str, field: &str, errors: &mut Errors) {
    if !is_valid_provider(provider) {
        errors.push(field, "must match [a-z0-9_-]{1,64}");
    }
}

fn optional_egress(fields: Fields<'_>, key: &str, errors: &mut Errors) -> Option<EgressMode> {
    match fields.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if EgressMode::parse(s).is_some() => EgressMode::parse(s),
        Some(_) => {
            errors.push(fields.path(key), "must be one of off, audit, enforce");
            None
        }
    }
}

pub fn check_temperature(t: f64) -> bool {
    (0.0..=2.0).contains(&t)
}

pub fn check_max_tokens(n: u64) -> bool {
    (1..=1_000_000).contains(&n)
}

fn parse_tasks(value: Option<&Value>, errors: &mut Errors) -> Vec<LlmTaskPolicy> {
    let items = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            errors.push("tasks", "must be an array");
            return Vec::new();
        }
    };
    if items.len() > MAX_TASKS {
        errors.push("tasks", format!("at most {MAX_TASKS} tasks"));
        return Vec::new();
    }
    let mut tasks = Vec::with_capacity(items.len());
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("tasks[{i}]");
        let Some(map) = as_object(item, &prefix, errors) else {
            continue;
        };
        let map = Fields {
            map,
            prefix: &prefix,
        };
        reject_unknown(
            map.map,
            &["task", "model", "provider", "temperature", "maxTokens"],
            &prefix,
            errors,
        );
        let task: Option<String> = map.required("task", errors);
        let model: Option<String> = map.required("model", errors);
        let provider: Option<String> = map.required("provider", errors);
        let temperature: Option<f64> = map.optional("temperature", errors);
        let max_tokens: Option<u64> = map.optional("maxTokens", errors);
        if let Some(t) = &task {
            if !char_len_between(t, 1, 100) {
                errors.push(map.path("task"), "must be 1-100 characters");
            } else if !seen.insert(t.clone()) {
                errors.push(map.path("task"), "duplicate task name");
            }
        }
        if let Some(m) = &model {
            check_model(m, &map.path("model"), errors);
        }
        if let Some(p) = &provider {
            check_provider(p, &map.path("provider"), errors);
        }
        if temperature.is_some_and(|t| !check_temperature(t)) {
            errors.push(map.path("temperature"), "must be between 0 and 2");
        }
        if max_tokens.is_some_and(|n| !check_max_tokens(n)) {
            errors.push(map.path("maxTokens"), "must be between 1 and 1000000");
        }
        if let (Some(task), Some(model), Some(provider)) = (task, model, provider) {
            tasks.push(LlmTaskPolicy {
                task,
                model,
                provider,
                temperature,
                max_tokens: max_tokens.and_then(|n| u32::try_from(n).ok()),
            });
        }
    }
    tasks
}

fn parse_user_policies(
    value: Option<&Value>,
    errors: &mut Errors,
) -> BTreeMap<UserId, UserEgressPolicy> {
    let mut out = BTreeMap::new();
    let map = match value {
        None | Some(Value::Null) => return out,
        Some(Value::Object(map)) => map,
        Some(_) => {
            errors.push("userPolicies", "must be an object keyed by userId");
            return out;
        }
    };
    if map.len() > MAX_USER_POLICIES {
        errors.push(
            "userPolicies",
            format!("at most {MAX_USER_POLICIES} entries"),
        );
        return out;
    }
    for (user, entry) in map {
        let prefix = format!("userPolicies.{user}");
        let Ok(user_id) = UserId::parse(user) else {
            errors.push(prefix, "key must be a valid userId");
            continue;
        };
        let Some(entry) = as_object(entry, &prefix, errors) else {
            continue;
        };
        reject_unknown(entry, &["egressMode", "allowOffMode"], &prefix, errors);
        let entry = Fields {
            map: entry,
            prefix: &prefix,
        };
        let egress_mode = optional_egress(entry, "egressMode", errors);
        let allow_off_mode = entry.optional("allowOffMode", errors);
        out.insert(
            user_id,
            UserEgressPolicy {
                egress_mode,
                allow_off_mode,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    /// The schema and the parser come from one list (`policy_input!`); this keeps it so.
    #[cfg(feature = "openapi")]
    #[test]
    fn the_policy_schema_documents_exactly_the_fields_the_parser_knows() {
        use std::collections::BTreeSet;
        use utoipa::PartialSchema;
        use utoipa::openapi::RefOr;
        use utoipa::openapi::schema::Schema;
        let RefOr::T(Schema::Object(schema)) = PolicyInput::schema() else {
            panic!("PolicyInput is an object schema");
        };
        let documented: BTreeSet<&str> = schema.properties.keys().map(String::as_str).collect();
        let known = POLICY_INPUT_FIELDS
            .iter()
            .chain(crate::json::READ_ONLY_FIELDS);
        assert_eq!(documented, known.copied().collect::<BTreeSet<&str>>());
    }

    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    #[test]
    fn minimal_policy_gets_defaults() {
        let p = TenantLlmPolicy::from_json(
            &json!({"defaultModel": "m", "defaultProvider": "openai"}),
            &tenant(),
        )
        .unwrap();
        assert!(p.allow_remote_egress);
        assert!(p.tasks.is_empty());
        assert_eq!(p.tenant_id, tenant());
        assert_eq!(p.egress_mode, None);
    }

    #[test]
    fn every_bad_field_is_reported_once() {
        let err = TenantLlmPolicy::from_json(
            &json!({
                "tenantId": "other",
                "defaultModel": "",
                "defaultProvider": "Open AI",
                "egressMode": "loose",
                "tasks": [
                    {"task": "a", "model": "m", "provider": "p", "temperature": 3},
                    {"task": "a", "model": "m", "provider": "p", "maxTokens": 0, "extra": 1}
                ],
                "userPolicies": {"bad id": {}, "u1": {"egressMode": "nope"}},
                "typo": true
            }),
            &tenant(),
        )
        .unwrap_err();
        let mut fields: Vec<_> = err
            .field_errors()
            .iter()
            .map(|e| e.field.as_str())
            .collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "defaultModel",
                "defaultProvider",
                "egressMode",
                "tasks[0].temperature",
                "tasks[1].extra",
                "tasks[1].maxTokens",
                "tasks[1].task",
                "tenantId",
                "typo",
                "userPolicies.bad id",
                "userPolicies.u1.egressMode",
            ]
        );
    }

    #[test]
    fn missing_required_fields_and_non_objects() {
        let err = TenantLlmPolicy::from_json(&json!({}), &tenant()).unwrap_err();
        assert_eq!(err.field_errors().len(), 2);
        let err = TenantLlmPolicy::from_json(&json!([1]), &tenant()).unwrap_err();
        assert_eq!(err.field_errors()[0].field, "$");
    }

    #[test]
    fn read_only_fields_are_ignored_and_report_only_is_audit() {
        let p = TenantLlmPolicy::from_json(
            &json!({"tenantId": "acme", "defaultModel": "m", "defaultProvider": "p", "version": 7,
                    "updatedAt": "x", "updatedBy": "y", "egressMode": "report-only"}),
            &tenant(),
        )
        .unwrap();
        assert_eq!(p.egress_mode, Some(EgressMode::Audit));
        let out = serde_json::to_value(&p).unwrap();
        assert_eq!(out["egressMode"], "audit");
    }

    #[test]
    fn size_limits_on_tasks() {
        let tasks: Vec<_> = (0..=MAX_TASKS)
            .map(|i| json!({"task": format!("t{i}"), "model": "m", "provider": "p"}))
            .collect();
        let err = TenantLlmPolicy::from_json(
            &json!({"defaultModel": "m", "defaultProvider": "p", "tasks": tasks}),
            &tenant(),
        )
        .unwrap_err();
        assert_eq!(err.field_errors()[0].field, "tasks");
    }
}
