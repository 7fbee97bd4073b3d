//! Tenant memberships (DESIGN.md 6.4): who is a member or admin of a tenant, and whether active.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::access::TenantRole;
use crate::error::InputError;
use crate::id::{TenantId, UserId};
use crate::json::body_object;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MembershipStatus {
    Active,
    Suspended,
}

impl MembershipStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub role: TenantRole,
    pub status: MembershipStatus,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Membership {
    pub fn is_active(&self) -> bool {
        self.status == MembershipStatus::Active
    }
}

/// The body of `PUT .../members/{u}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), serde(deny_unknown_fields),
    schema(as = MembershipPutInput, example = json!({"role": "member", "status": "active"})))]
pub struct MembershipInput {
    pub role: TenantRole,
    pub status: MembershipStatus,
}

impl MembershipInput {
    pub fn from_json(body: &Value) -> Result<Self, InputError> {
        let (map, mut errors) = body_object(body, &["role", "status"])?;
        let role = map.required("role", &mut errors);
        let status = map.required("status", &mut errors);
        errors.check()?;
        match (role, status) {
            (Some(role), Some(status)) => Ok(Self { role, status }),
            _ => Err(InputError::field("role", "is required")),
        }
    }
}
