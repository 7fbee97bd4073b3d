use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use copilot_domain::access::{
    authorize_append, authorize_create, authorize_delete_message, authorize_manage, list_viewer,
};
use copilot_domain::conversation::{
    Conversation, ConversationPage, ConversationQuery, ConversationStatus, ConversationUpdate,
    CreateConversationRequest, Message, MessageInput, MessagePage, MessageQuery, NewConversation,
    NewMessage,
};
use copilot_domain::cursor::ListCursor;
use copilot_domain::{ConversationId, Principal, TenantId};
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;
use crate::extract::{IfMatch, JsonBody, Precondition, Query, with_etag};
use crate::routes::events::{Change, publish};
use crate::routes::params::{ConversationPath, MessagePath, TenantPath};
use crate::routes::responses::{Created, Current, Stored};
use crate::state::AppState;

fn parse_number<T: std::str::FromStr>(name: &str, value: Option<&str>) -> ApiResult<Option<T>> {
    value
        .map(|v| {
            v.parse::<T>().map_err(|_| {
                ApiError::InvalidRequest(format!("{name} must be a non-negative integer"))
            })
        })
        .transpose()
}

/// Creates a conversation. Members create their own; only services set `userId` (another
/// user, or `null` for a system conversation).
#[utoipa::path(operation_id = "createConversation", post, path = "/v1/tenants/{t}/conversations", tag = "conversations",
    params(TenantPath),
    request_body = CreateConversationRequest,
    responses(Created<Conversation>))]
pub async fn create(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantPath { tenant }: TenantPath,
    JsonBody(body, _): JsonBody,
) -> ApiResult<Response> {
    copilot_domain::access::authorize_tenant(&principal, &tenant)?;
    let request = CreateConversationRequest::from_json(&body)?;
    let owner = authorize_create(&principal, &tenant, &request)?;
    let new = NewConversation {
        tenant_id: tenant,
        user_id: owner,
        title: request.title,
        persona_id: request.persona_id,
        jurisdictions: request.jurisdictions,
        share_audience: request.share_audience,
        tenant_access: request.tenant_access,
    };
    let created = state
        .store(
            "create_conversation",
            state.stores.conversations.create_conversation(&new),
        )
        .await?;
    publish(state.cache.events(), Change::Created(&created)).await;
    Ok(with_etag(StatusCode::CREATED, created.version, &created))
}

#[derive(Deserialize)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// Conversations the caller may read, newest activity first, keyset-paginated.
#[utoipa::path(operation_id = "listConversations", get, path = "/v1/tenants/{t}/conversations", tag = "conversations",
    params(TenantPath,
           ("status" = Option<ConversationStatus>, Query, description = "active (default), archived or all"),
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1-100, default 20"),
           ("cursor" = Option<String>, Query, description = "nextCursor of the previous page")),
    responses((status = 200, description = "One page", body = ConversationPage)))]
pub async fn list(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantPath { tenant }: TenantPath,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let viewer = list_viewer(&principal, &tenant)?;
    let status = match params.status.as_deref() {
        None => ConversationStatus::Active,
        Some(s) => ConversationStatus::parse(s).ok_or_else(|| {
            ApiError::InvalidRequest("status must be active, archived or all".into())
        })?,
    };
    let limit = parse_number::<u32>("limit", params.limit.as_deref())?;
    let after = params
        .cursor
        .as_deref()
        .map(|c| ListCursor::decode(c, status, &state.service.cursor_key))
        .transpose()?;
    let query = ConversationQuery::new(tenant, viewer, status, limit, after)?
        .with_cursor_key(state.service.cursor_key.clone());
    let page = state
        .store(
            "list_conversations",
            state.stores.conversations.list_conversations(&query),
        )
        .await?;
    Ok(axum::Json(page).into_response())
}

/// One conversation. A `public` one is readable by any authenticated principal by id.
#[utoipa::path(operation_id = "getConversation", get, path = "/v1/tenants/{t}/conversations/{id}", tag = "conversations",
    params(ConversationPath),
    responses(Current<Conversation>))]
pub async fn get(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConversationPath { tenant, id }: ConversationPath,
) -> ApiResult<Response> {
    let conversation = state
        .readable_conversation(&principal, &tenant, &id)
        .await?;
    Ok(with_etag(
        StatusCode::OK,
        conversation.version,
        &conversation,
    ))
}

/// Changes title, sharing and archive state in one atomic update.
#[utoipa::path(operation_id = "updateConversation", patch, path = "/v1/tenants/{t}/conversations/{id}", tag = "conversations",
    params(ConversationPath, IfMatch),
    request_body = ConversationUpdate,
    responses(Stored<Conversation>))]
pub async fn update(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConversationPath { tenant, id }: ConversationPath,
    IfMatch(expected): IfMatch,
    JsonBody(body, _): JsonBody,
) -> ApiResult<Response> {
    let conversations = &state.stores.conversations;
    let update = ConversationUpdate::from_json(&body)?;
    let (conversation, expected) = manageable(&state, &principal, (&tenant, &id), expected).await?;
    let updated = state
        .store(
            "update_conversation",
            conversations.update_conversation(&tenant, &id, &update, expected),
        )
        .await?;
    publish(
        state.cache.events(),
        Change::Updated {
            before: &conversation,
            after: &updated,
        },
    )
    .await;
    Ok(with_etag(StatusCode::OK, updated.version, &updated))
}

/// The conversation, if `principal` may manage it, and the version the write must find (412
/// unless `If-Match` names the current one).
async fn manageable(
    state: &AppState,
    principal: &Principal,
    (tenant, id): (&TenantId, &ConversationId),
    expected: Precondition,
) -> ApiResult<(Conversation, Option<u64>)> {
    let conversation = state.readable_conversation(principal, tenant, id).await?;
    authorize_manage(principal, &conversation)?;
    let version = conversation.version;
    let expected = expected
        .expected(|| async move { Ok(Some(version)) })
        .await?;
    Ok((conversation, expected))
}

/// Deletes a conversation and its messages.
#[utoipa::path(operation_id = "deleteConversation", delete, path = "/v1/tenants/{t}/conversations/{id}", tag = "conversations",
    params(ConversationPath, IfMatch),
    responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConversationPath { tenant, id }: ConversationPath,
    IfMatch(expected): IfMatch,
) -> ApiResult<Response> {
    let conversations = &state.stores.conversations;
    let (conversation, expected) = manageable(&state, &principal, (&tenant, &id), expected).await?;
    state
        .store(
            "delete_conversation",
            conversations.delete_conversation(&tenant, &id, expected),
        )
        .await?;
    publish(state.cache.events(), Change::Deleted(&conversation)).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Appends a message with the next `seq`. `assistant` and `system` messages: services only.
#[utoipa::path(operation_id = "appendMessage", post, path = "/v1/tenants/{t}/conversations/{id}/messages", tag = "messages",
    params(ConversationPath),
    request_body = MessageInput,
    responses((status = 201, description = "The stored message", body = Message)))]
pub async fn append(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConversationPath { tenant, id }: ConversationPath,
    JsonBody(body, _): JsonBody,
) -> ApiResult<Response> {
    let conversations = &state.stores.conversations;
    let input = MessageInput::from_json(&body, state.service.max_message_bytes)?;
    let conversation = state
        .readable_conversation(&principal, &tenant, &id)
        .await?;
    authorize_append(&principal, &conversation, input.role)?;
    let message = NewMessage {
        role: input.role,
        content: input.content,
        metadata: input.metadata,
        author_id: principal.user_id().cloned(),
    };
    let written = state
        .store(
            "append_message",
            conversations.append_message(&tenant, &id, &message),
        )
        .await?;
    let appended = Change::MessageAppended(&written, &conversation);
    publish(state.cache.events(), appended).await;
    Ok((StatusCode::CREATED, axum::Json(written.message)).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageParams {
    limit: Option<String>,
    before: Option<String>,
    after: Option<String>,
    include_deleted: Option<String>,
}

/// Messages in ascending `seq`: the newest `limit` by default; `before`/`after` page.
#[utoipa::path(operation_id = "listMessages", get, path = "/v1/tenants/{t}/conversations/{id}/messages", tag = "messages",
    params(ConversationPath,
           ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1-500, default 50"),
           ("before" = Option<u64>, Query, maximum = 9223372036854775807_u64, description = "Only messages with a smaller seq"),
           ("after" = Option<u64>, Query, maximum = 9223372036854775807_u64, description = "Only messages with a larger seq (oldest first)"),
           ("includeDeleted" = Option<bool>, Query, description = "Include tombstones (content null)")),
    responses((status = 200, description = "One page", body = MessagePage)))]
pub async fn messages(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConversationPath { tenant, id }: ConversationPath,
    Query(params): Query<MessageParams>,
) -> ApiResult<Response> {
    let conversations = &state.stores.conversations;
    let include_deleted = match params.include_deleted.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "includeDeleted must be true or false".into(),
            ));
        }
    };
    let query = MessageQuery::new(
        parse_number("limit", params.limit.as_deref())?,
        parse_number("before", params.before.as_deref())?,
        parse_number("after", params.after.as_deref())?,
        include_deleted,
    )?;
    state
        .readable_conversation(&principal, &tenant, &id)
        .await?;
    let page = state
        .store(
            "list_messages",
            conversations.list_messages(&tenant, &id, &query),
        )
        .await?;
    Ok(axum::Json(page).into_response())
}

/// Soft-deletes a message (idempotent).
#[utoipa::path(operation_id = "deleteMessage", delete, path = "/v1/tenants/{t}/conversations/{id}/messages/{mid}", tag = "messages",
    params(MessagePath),
    responses((status = 204, description = "Deleted (or already deleted)")))]
pub async fn delete_message(
    State(state): State<AppState>,
    Auth(principal): Auth,
    MessagePath { tenant, id, mid }: MessagePath,
) -> ApiResult<Response> {
    let conversations = &state.stores.conversations;
    let conversation = state
        .readable_conversation(&principal, &tenant, &id)
        .await?;
    let message = state
        .store("get_message", conversations.get_message(&tenant, &id, &mid))
        .await?
        .ok_or(ApiError::NotFound)?;
    authorize_delete_message(&principal, &conversation, &message)?;
    let written = state
        .store(
            "soft_delete_message",
            conversations.soft_delete_message(&tenant, &id, &mid, principal.actor()),
        )
        .await?;
    if !message.is_deleted() {
        let deleted = Change::MessageDeleted(&written, &conversation);
        publish(state.cache.events(), deleted).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
