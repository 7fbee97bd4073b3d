//! SQL both backends build the same way; each supplies only its dialect's values (how a time and
//! a version are bound).

use copilot_domain::access::TenantRole;
use copilot_domain::conversation::{
    ConversationQuery, ConversationStatus, ConversationUpdate, ListViewer,
};
use copilot_domain::membership::{Membership, MembershipInput, MembershipStatus};
use copilot_domain::{TenantId, Timestamp, UserId};
use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::{StoreError, StoreResult};

/// The `SET` list of a conversation update after `updated_at = `: the time, the version, and the
/// fields the update names (`archived: true` keeps an earlier archive time).
pub(crate) fn push_conversation_update<'args, DB, Time, Version>(
    sql: &mut QueryBuilder<'args, DB>,
    update: &ConversationUpdate,
    now: Time,
    version: Version,
) where
    DB: Database,
    Time: 'args + Encode<'args, DB> + Type<DB> + Clone,
    Version: 'args + Encode<'args, DB> + Type<DB>,
    Option<String>: 'args + Encode<'args, DB> + Type<DB>,
    &'static str: 'args + Encode<'args, DB> + Type<DB>,
{
    sql.push_bind(now.clone())
        .push(", version = ")
        .push_bind(version);
    if let Some(title) = &update.title {
        sql.push(", title = ").push_bind(title.clone());
    }
    if let Some(audience) = update.share_audience {
        sql.push(", share_audience = ").push_bind(audience.as_str());
    }
    if let Some(access) = update.tenant_access {
        sql.push(", tenant_access = ").push_bind(access.as_str());
    }
    match update.archived {
        Some(true) => {
            sql.push(", archived_at = coalesce(archived_at, ")
                .push_bind(now)
                .push(")");
        }
        Some(false) => {
            sql.push(", archived_at = NULL");
        }
        None => {}
    }
}

/// A conversation listing's conditions after `WHERE tenant_id = `: the tenant, the access rule
/// (part of the query, so every page is full: never filter after `LIMIT`) and the status. The
/// keyset condition and the order are the backend's (its list order expression differs).
pub(crate) fn push_list_filters<'args, DB>(
    sql: &mut QueryBuilder<'args, DB>,
    query: &'args ConversationQuery,
) where
    DB: Database,
    &'args str: Encode<'args, DB> + Type<DB>,
{
    sql.push_bind(query.tenant_id.as_str());
    if let ListViewer::User(me) = &query.viewer {
        sql.push(" AND (user_id IS NULL OR user_id = ")
            .push_bind(me.as_str())
            .push(" OR share_audience <> 'private')");
    }
    match query.status {
        ConversationStatus::Active => {
            sql.push(" AND archived_at IS NULL");
        }
        ConversationStatus::Archived => {
            sql.push(" AND archived_at IS NOT NULL");
        }
        ConversationStatus::All => {}
    }
}

/// A policy upsert after `INSERT INTO <table>`: the tenant's document at `version`.
pub(crate) fn push_policy_upsert<'args, DB, Document, Version, Time>(
    sql: &mut QueryBuilder<'args, DB>,
    tenant: &'args str,
    document: Document,
    version: Version,
    at: Time,
    actor: &'args str,
) where
    DB: Database,
    Document: 'args + Encode<'args, DB> + Type<DB>,
    Version: 'args + Encode<'args, DB> + Type<DB>,
    Time: 'args + Encode<'args, DB> + Type<DB>,
    &'args str: Encode<'args, DB> + Type<DB>,
{
    sql.push(" (tenant_id, document, version, updated_at, updated_by) VALUES (");
    let mut values = sql.separated(", ");
    values.push_bind(tenant);
    values.push_bind(document);
    values.push_bind(version);
    values.push_bind(at);
    values.push_bind(actor);
    sql.push(
        ") ON CONFLICT (tenant_id) DO UPDATE SET document = excluded.document, \
         version = excluded.version, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
    );
}

/// A membership upsert after `INSERT INTO <table>`, up to `RETURNING` (the caller's columns).
pub(crate) fn push_membership_upsert<'args, DB, Version, Time>(
    sql: &mut QueryBuilder<'args, DB>,
    key: (&'args str, &'args str),
    input: &MembershipInput,
    version: Version,
    at: Time,
) where
    DB: Database,
    Version: 'args + Encode<'args, DB> + Type<DB>,
    Time: 'args + Encode<'args, DB> + Type<DB> + Clone,
    &'args str: Encode<'args, DB> + Type<DB>,
{
    sql.push(" (tenant_id, user_id, role, status, version, created_at, updated_at) VALUES (");
    let mut values = sql.separated(", ");
    values.push_bind(key.0);
    values.push_bind(key.1);
    values.push_bind(input.role.as_str());
    values.push_bind(input.status.as_str());
    values.push_bind(version);
    values.push_bind(at.clone());
    values.push_bind(at);
    sql.push(
        ") ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = excluded.role, \
         status = excluded.status, version = excluded.version, updated_at = excluded.updated_at \
         RETURNING ",
    );
}

/// A stored count or version (SQL integers are signed): a negative one is corrupt data.
pub(crate) fn to_u64(value: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(what, value))
}

/// A membership row as either backend returns it; `Time` is how the backend stores a time.
#[derive(sqlx::FromRow)]
pub(crate) struct MembershipRow<Time> {
    tenant_id: String,
    user_id: String,
    role: String,
    status: String,
    version: i64,
    created_at: Time,
    updated_at: Time,
}

impl<Time> MembershipRow<Time> {
    /// The membership, with each stored time read by `time`.
    pub(crate) fn decode(self, time: impl Fn(Time) -> Timestamp) -> StoreResult<Membership> {
        Ok(Membership {
            tenant_id: TenantId::parse(&self.tenant_id)
                .map_err(|e| StoreError::corrupt("tenant_id", e))?,
            user_id: UserId::parse(&self.user_id).map_err(|e| StoreError::corrupt("user_id", e))?,
            role: TenantRole::parse(&self.role)
                .ok_or_else(|| StoreError::corrupt("role", &self.role))?,
            status: MembershipStatus::parse(&self.status)
                .ok_or_else(|| StoreError::corrupt("status", &self.status))?,
            version: to_u64(self.version, "version")?,
            created_at: time(self.created_at),
            updated_at: time(self.updated_at),
        })
    }
}
