//! Route resolution (DESIGN.md 3.3): which provider and model a call must use, and how strictly
//! its outbound data is guarded. Pure: the caller supplies the stored policy.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::{Denial, Principal, authorize_route_for};
use crate::egress::EgressMode;
use crate::error::InputError;
use crate::id::{TenantId, UserId};
use crate::json::{body_object, char_len_between};
use crate::policy::{StoredPolicy, TenantLlmPolicy, check_max_tokens, check_temperature};

/// Server-wide routing defaults (`COPILOT_DEFAULT_PROVIDER`, `COPILOT_DEFAULT_MODEL`,
/// `COPILOT_LOCAL_PROVIDER`, `COPILOT_BASE_EGRESS_MODE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterDefaults {
    pub provider: String,
    pub model: String,
    pub local_provider: String,
    pub base_egress_mode: EgressMode,
}

impl Default for RouterDefaults {
    fn default() -> Self {
        Self {
            provider: "local".into(),
            model: "default".into(),
            local_provider: "local".into(),
            base_egress_mode: EgressMode::Enforce,
        }
    }
}

/// The body of `POST .../llm-route`.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema),
    serde(rename_all = "camelCase", deny_unknown_fields),
    schema(as = RouteRequestInput, example = json!({"task": "summarize", "userId": "alice"})))]
pub struct RouteRequest {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 100))]
    pub task: Option<String>,
    /// Defaults to the caller; another user's: tenant admins and services.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub user_id: Option<UserId>,
    /// Replaces the model, never the provider.
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub model: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::egress::EgressModeInput>))]
    pub egress_mode_override: Option<EgressMode>,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2))]
    pub temperature: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000000))]
    pub max_tokens: Option<u32>,
}

impl RouteRequest {
    pub fn from_json(body: &Value) -> Result<Self, InputError> {
        let (map, mut errors) = body_object(
            body,
            &[
                "task",
                "userId",
                "model",
                "egressModeOverride",
                "temperature",
                "maxTokens",
            ],
        )?;
        let task: Option<String> = map.optional("task", &mut errors);
        if task
            .as_deref()
            .is_some_and(|t| !char_len_between(t, 1, 100))
        {
            errors.push("task", "must be 1-100 characters");
        }
        let user_id = map.optional("userId", &mut errors);
        let model: Option<String> = map.optional("model", &mut errors);
        if model
            .as_deref()
            .is_some_and(|m| !char_len_between(m, 1, 200))
        {
            errors.push("model", "must be 1-200 characters");
        }
        let egress_mode_override = map.optional("egressModeOverride", &mut errors);
        let temperature: Option<f64> = map.optional("temperature", &mut errors);
        if temperature.is_some_and(|t| !check_temperature(t)) {
            errors.push("temperature", "must be between 0 and 2");
        }
        let max_tokens: Option<u64> = map.optional("maxTokens", &mut errors);
        if max_tokens.is_some_and(|n| !check_max_tokens(n)) {
            errors.push("maxTokens", "must be between 1 and 1000000");
        }
        errors.check()?;
        Ok(Self {
            task,
            user_id,
            model,
            egress_mode_override,
            temperature,
            max_tokens: max_tokens.and_then(|n| u32::try_from(n).ok()),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RouteSource {
    Task,
    TenantDefault,
    RouterDefault,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EgressDecision {
    pub requested: EgressMode,
    pub effective: EgressMode,
    pub off_allowed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub provider: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    pub source: RouteSource,
    pub egress: EgressDecision,
    pub policy_version: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Remote egress is off and neither the task nor the tenant default is local (HTTP 409).
    #[error("no local route for task {}", task.as_deref().unwrap_or("(none)"))]
    NoLocalRoute { task: Option<String> },
    #[error(transparent)]
    Denied(#[from] Denial),
}

/// Resolves the route of one call. `policy` is the tenant's stored policy, if any.
pub fn resolve_route(
    policy: Option<&StoredPolicy>,
    defaults: &RouterDefaults,
    request: &RouteRequest,
    principal: &Principal,
    tenant: &TenantId,
) -> Result<Route, RouteError> {
    // Rule 8: userId defaults to the caller; a member may resolve only for itself.
    authorize_route_for(principal, tenant, request.user_id.as_ref())?;
    let user = request.user_id.as_ref().or(principal.user_id());

    let egress = resolve_egress(
        policy.map(|p| &p.policy),
        defaults.base_egress_mode,
        user,
        request.egress_mode_override,
        principal,
    );

    let Some(stored) = policy else {
        // Rule 1: no policy, router defaults.
        return Ok(Route {
            provider: defaults.provider.clone(),
            model: request
                .model
                .clone()
                .unwrap_or_else(|| defaults.model.clone()),
            temperature: request.temperature,
            max_tokens: request.max_tokens,
            source: RouteSource::RouterDefault,
            egress,
            policy_version: None,
        });
    };
    let policy = &stored.policy;
    // Rule 2.
    let task = request.task.as_deref().and_then(|t| policy.task(t));

    // Rules 3 and 4.
    let (provider, model, source) = if !policy.allow_remote_egress {
        let local = &defaults.local_provider;
        match task {
            Some(t) if &t.provider == local => (local.clone(), t.model.clone(), RouteSource::Task),
            _ if &policy.default_provider == local => (
                local.clone(),
                policy.default_model.clone(),
                RouteSource::TenantDefault,
            ),
            _ => {
                return Err(RouteError::NoLocalRoute {
                    task: request.task.clone(),
                });
            }
        }
    } else {
        match task {
            Some(t) => (t.provider.clone(), t.model.clone(), RouteSource::Task),
            None => (
                policy.default_provider.clone(),
                policy.default_model.clone(),
                RouteSource::TenantDefault,
            ),
        }
    };

    // Rule 5: the administrator's task settings win over the caller's, for the task's route.
    let task_settings = task.filter(|_| source == RouteSource::Task);
    let temperature = task_settings
        .and_then(|t| t.temperature)
        .or(request.temperature);
    let max_tokens = task_settings
        .and_then(|t| t.max_tokens)
        .or(request.max_tokens);

    Ok(Route {
        provider,
        // Rule 6: a caller's model replaces the model, never the provider.
        model: request.model.clone().unwrap_or(model),
        temperature,
        max_tokens,
        source,
        egress,
        policy_version: Some(stored.version),
    })
}

/// Rule 7: start from the base mode; apply the tenant's, the user's, then the call's mode.
pub fn resolve_egress(
    policy: Option<&TenantLlmPolicy>,
    base: EgressMode,
    user: Option<&UserId>,
    call_override: Option<EgressMode>,
    principal: &Principal,
) -> EgressDecision {
    let tenant_off_allowed = policy.and_then(|p| p.allow_off_mode).unwrap_or(false);
    let user_policy = policy.zip(user).and_then(|(p, u)| p.user_policies.get(u));
    let off_allowed = user_policy
        .and_then(|u| u.allow_off_mode)
        .unwrap_or(tenant_off_allowed);

    let mut requested = base;
    let mut effective = base;
    if let Some(mode) = policy.and_then(|p| p.egress_mode) {
        requested = mode;
        if mode != EgressMode::Off || tenant_off_allowed {
            effective = mode;
        }
    }
    if let Some(mode) = user_policy.and_then(|u| u.egress_mode) {
        requested = mode;
        if mode != EgressMode::Off || off_allowed {
            effective = mode;
        }
    }
    if let Some(mode) = call_override {
        requested = mode;
        let off_refused = mode == EgressMode::Off && !off_allowed;
        let loosening_refused = !principal.is_service() && mode < effective;
        if !off_refused && !loosening_refused {
            effective = mode;
        }
    }
    EgressDecision {
        requested,
        effective,
        off_allowed,
    }
}

#[cfg(test)]
mod tests;
