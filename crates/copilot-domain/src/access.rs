//! Principals and the access table of DESIGN.md 3.6, as pure functions.
//!
//! Every decision answers in the same three ways: allowed; `NotFound` when the principal may not
//! read the thing (no existence oracle); `Forbidden` when it may read but not do this.

use serde::Serialize;

use crate::config::ConfigLevel;
use crate::conversation::{
    Conversation, CreateConversationRequest, ListViewer, Message, MessageRole, ShareAudience,
    TenantAccess,
};
use crate::id::{TenantId, UserId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TenantRole {
    Member,
    Admin,
}

impl TenantRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(Self::Member),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// A user acting inside its own tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPrincipal {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    pub role: TenantRole,
}

/// Who is asking, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    User(UserPrincipal),
    /// Trusted back-end code (`service_role`): may act in any tenant named in the path.
    Service {
        subject: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// The principal may not read it: answer as if it did not exist.
    #[error("not found")]
    NotFound,
    /// The principal may read it but not do this.
    #[error("forbidden")]
    Forbidden,
    /// Appends and message deletes on an archived conversation.
    #[error("conversation is archived")]
    Archived,
}

type Decision = Result<(), Denial>;

impl Principal {
    pub fn user(tenant: &TenantId, user: &UserId, role: TenantRole) -> Self {
        Self::User(UserPrincipal {
            tenant_id: tenant.clone(),
            user_id: user.clone(),
            role,
        })
    }

    pub fn service(subject: impl Into<String>) -> Self {
        Self::Service {
            subject: subject.into(),
        }
    }

    /// Recorded as `updatedBy` / `deletedBy`.
    pub fn actor(&self) -> &str {
        match self {
            Self::User(u) => u.user_id.as_str(),
            Self::Service { subject } => subject,
        }
    }

    pub fn is_service(&self) -> bool {
        matches!(self, Self::Service { .. })
    }

    pub fn user_id(&self) -> Option<&UserId> {
        match self {
            Self::User(u) => Some(&u.user_id),
            Self::Service { .. } => None,
        }
    }

    /// A user of `tenant` (any role).
    pub fn is_member_of(&self, tenant: &TenantId) -> bool {
        matches!(self, Self::User(u) if &u.tenant_id == tenant)
    }

    fn is_admin_of(&self, tenant: &TenantId) -> bool {
        matches!(self, Self::User(u) if &u.tenant_id == tenant && u.role == TenantRole::Admin)
    }

    fn is(&self, user: Option<&UserId>) -> bool {
        matches!((self, user), (Self::User(u), Some(id)) if &u.user_id == id)
    }
}

/// A path naming a tenant: a user may act only in its own (another tenant is 404, so its
/// existence is not confirmed); a service in any.
pub fn authorize_tenant(p: &Principal, tenant: &TenantId) -> Decision {
    match p {
        Principal::Service { .. } => Ok(()),
        Principal::User(_) if p.is_member_of(tenant) => Ok(()),
        Principal::User(_) => Err(Denial::NotFound),
    }
}

/// Tenant administration (policy writes, tenant config, memberships): admins and services.
pub fn authorize_tenant_admin(p: &Principal, tenant: &TenantId) -> Decision {
    authorize_tenant(p, tenant)?;
    if p.is_service() || p.is_admin_of(tenant) {
        Ok(())
    } else {
        Err(Denial::Forbidden)
    }
}

/// Reading a stored config level (and, for a user level, the effective config of that user).
pub fn authorize_config_read(p: &Principal, level: &ConfigLevel) -> Decision {
    match level {
        ConfigLevel::Global => Ok(()),
        ConfigLevel::Tenant(t) => authorize_tenant(p, t),
        ConfigLevel::User(t, u) => {
            authorize_tenant(p, t)?;
            if p.is_service() || p.is_admin_of(t) || p.is(Some(u)) {
                Ok(())
            } else {
                Err(Denial::Forbidden)
            }
        }
    }
}

/// Writing a config level: global by services only; tenant by admins; a user level by that
/// user or an admin.
pub fn authorize_config_write(p: &Principal, level: &ConfigLevel) -> Decision {
    match level {
        ConfigLevel::Global => {
            if p.is_service() {
                Ok(())
            } else {
                Err(Denial::Forbidden)
            }
        }
        ConfigLevel::Tenant(t) => authorize_tenant_admin(p, t),
        ConfigLevel::User(..) => authorize_config_read(p, level),
    }
}

/// Resolving a route for `user`: a member only for itself; admins and services for anyone.
pub fn authorize_route_for(p: &Principal, tenant: &TenantId, user: Option<&UserId>) -> Decision {
    authorize_tenant(p, tenant)?;
    match user {
        Some(u) if !p.is_service() && !p.is_admin_of(tenant) && !p.is(Some(u)) => {
            Err(Denial::Forbidden)
        }
        _ => Ok(()),
    }
}

/// Read access to a conversation and its messages.
pub fn can_read(p: &Principal, c: &Conversation) -> bool {
    match p {
        Principal::Service { .. } => true,
        // A public conversation is readable by any authenticated principal by id (share link).
        Principal::User(_) if c.share_audience == ShareAudience::Public => true,
        Principal::User(u) => {
            u.tenant_id == c.tenant_id && ListViewer::User(u.user_id.clone()).can_see(c)
        }
    }
}

pub fn authorize_read(p: &Principal, c: &Conversation) -> Decision {
    if can_read(p, c) {
        Ok(())
    } else {
        Err(Denial::NotFound)
    }
}

/// Appending a message with `role`.
pub fn authorize_append(p: &Principal, c: &Conversation, role: MessageRole) -> Decision {
    authorize_read(p, c)?;
    let allowed = p.is_service()
        || (role == MessageRole::User
            && (is_owner(p, c)
                || (p.is_member_of(&c.tenant_id)
                    && (c.user_id.is_none() || is_tenant_editable(c)))));
    if !allowed {
        return Err(Denial::Forbidden);
    }
    not_archived(c)
}

/// Soft-deleting message `m` of conversation `c`.
pub fn authorize_delete_message(p: &Principal, c: &Conversation, m: &Message) -> Decision {
    authorize_read(p, c)?;
    let allowed = p.is_service()
        || is_owner(p, c)
        || (p.is_member_of(&c.tenant_id) && (c.user_id.is_none() || is_tenant_editable(c)))
        || (p.is_member_of(&c.tenant_id) && p.is(m.author_id.as_ref()));
    if !allowed {
        return Err(Denial::Forbidden);
    }
    not_archived(c)
}

/// Changing title, sharing or archive state, and deleting the conversation.
pub fn authorize_manage(p: &Principal, c: &Conversation) -> Decision {
    authorize_read(p, c)?;
    let allowed = p.is_service()
        || is_owner(p, c)
        || (p.is_admin_of(&c.tenant_id)
            && (c.user_id.is_none() || c.share_audience != ShareAudience::Private));
    if allowed {
        Ok(())
    } else {
        Err(Denial::Forbidden)
    }
}

/// Decides the owner of a conversation to create. A member creates only its own; only a
/// service sets `userId` (another user, or `null` for a system conversation).
pub fn authorize_create(
    p: &Principal,
    tenant: &TenantId,
    request: &CreateConversationRequest,
) -> Result<Option<UserId>, Denial> {
    authorize_tenant(p, tenant)?;
    match p {
        Principal::Service { .. } => Ok(request.user_id.clone().flatten()),
        Principal::User(u) => match &request.user_id {
            None => Ok(Some(u.user_id.clone())),
            Some(Some(id)) if id == &u.user_id => Ok(Some(u.user_id.clone())),
            Some(_) => Err(Denial::Forbidden),
        },
    }
}

/// The access rule that the list query applies.
pub fn list_viewer(p: &Principal, tenant: &TenantId) -> Result<ListViewer, Denial> {
    authorize_tenant(p, tenant)?;
    Ok(match p {
        Principal::Service { .. } => ListViewer::Everyone,
        Principal::User(u) => ListViewer::User(u.user_id.clone()),
    })
}

/// The owner, in the conversation's tenant (user ids are only unique within a tenant).
fn is_owner(p: &Principal, c: &Conversation) -> bool {
    p.is_member_of(&c.tenant_id) && p.is(c.user_id.as_ref())
}

fn is_tenant_editable(c: &Conversation) -> bool {
    c.share_audience == ShareAudience::Tenant && c.tenant_access == TenantAccess::Edit
}

fn not_archived(c: &Conversation) -> Decision {
    if c.is_archived() {
        Err(Denial::Archived)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
