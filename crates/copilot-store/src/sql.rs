//! SQL both backends build the same way; each supplies only its dialect's values (how a time and
//! a version are bound).

use copilot_domain::conversation::{
    ConversationQuery, ConversationStatus, ConversationUpdate, ListViewer,
};
use sqlx::{Database, Encode, QueryBuilder, Type};

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
