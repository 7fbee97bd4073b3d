//! Live events (DESIGN.md 6.3): SSE for one conversation and for the tenant's conversation
//! list, custom events posted by services, and the events every conversation write publishes.
//!
//! Access is checked when a stream opens and again on every event that can change it: a
//! subscriber that can no longer read a conversation (sharing made private, membership
//! suspended, conversation deleted) gets `conversation.removed` with the id only, and nothing
//! more about it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use copilot_cache::events::{Event, EventBody, EventHub, EventId, Subscription, Topic};
use copilot_domain::access::{can_read, list_viewer};
use copilot_domain::conversation::{Conversation, ListViewer, MessageWrite};
use copilot_domain::{ConversationId, Principal, TenantId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;
use crate::extract::JsonBody;
use crate::routes::params::{ConversationPath, LastEventId, TenantPath};
use crate::state::AppState;

/// Heartbeat comments keep idle streams (and the proxies in front of them) open.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Custom event data is at most this many bytes of JSON.
const MAX_EVENT_DATA_BYTES: usize = 64 * 1024;

/// SSE of one conversation: `message.appended`, `message.deleted`, `conversation.updated`,
/// `conversation.deleted`, `conversation.removed`, custom events, and `resync` when the replay
/// window no longer covers `Last-Event-ID` (or this subscriber fell behind).
#[utoipa::path(operation_id = "streamConversationEvents", get, path = "/v1/tenants/{t}/conversations/{id}/events", tag = "events",
    params(ConversationPath, LastEventId),
    responses((status = 200, description = "An event stream (text/event-stream)", content_type = "text/event-stream", body = String)))]
pub async fn conversation_events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConversationPath { tenant, id }: ConversationPath,
    LastEventId(last): LastEventId,
) -> ApiResult<Response> {
    let conversation = state
        .readable_conversation(&principal, &tenant, &id)
        .await?;
    let subscription = subscribe(
        &state,
        &principal,
        Topic::Conversation(tenant.clone(), id),
        last,
    )
    .await;
    let stream = Stream {
        subscription,
        principal,
        filter: Filter::Conversation(Box::new(conversation)),
        queued: Vec::new(),
        ended: false,
    };
    Ok(sse(stream))
}

/// SSE of the tenant's conversation list: `conversation.created|updated|archived|unarchived|
/// deleted` with the conversation, each only to subscribers who may see it;
/// `conversation.removed` with the id to those who could and no longer can.
#[utoipa::path(operation_id = "streamConversationListEvents", get, path = "/v1/tenants/{t}/conversations/events", tag = "events",
    params(TenantPath, LastEventId),
    responses((status = 200, description = "An event stream (text/event-stream)", content_type = "text/event-stream", body = String)))]
pub async fn list_events(
    State(state): State<AppState>,
    Auth(principal): Auth,
    TenantPath { tenant }: TenantPath,
    LastEventId(last): LastEventId,
) -> ApiResult<Response> {
    let viewer = list_viewer(&principal, &tenant)?;
    let subscription = subscribe(&state, &principal, Topic::List(tenant), last).await;
    let stream = Stream {
        subscription,
        principal,
        filter: Filter::List(viewer),
        queued: Vec::new(),
        ended: false,
    };
    Ok(sse(stream))
}

/// A custom event.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "typing", "data": {"delta": "Hel"}}))]
pub struct EventPostInput {
    /// The SSE event type: 1-64 characters of `[A-Za-z0-9._:-]`, not `resync` and not starting
    /// with `message.`, `conversation.` or `member.` (those are the service's own).
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,64}$")]
    #[serde(rename = "type")]
    kind: String,
    /// Any JSON value, at most 64 KiB (e.g. `{"delta": "Hel"}`).
    // Held as the JSON text it is sent on as.
    #[schema(value_type = Option<Value>)]
    data: String,
}

/// `202` to a posted event.
#[derive(Serialize, ToSchema)]
pub struct EventAccepted {
    /// The event's id (as subscribers see it); null when only this instance's subscribers got
    /// it (Redis was unavailable).
    pub id: Option<String>,
}

/// Sends a custom event (e.g. streamed token deltas) to the conversation's subscribers.
/// Services only.
#[utoipa::path(operation_id = "postConversationEvent", post, path = "/v1/tenants/{t}/conversations/{id}/events", tag = "events",
    params(ConversationPath),
    request_body = EventPostInput,
    responses((status = 202, description = "Accepted for delivery", body = EventAccepted)))]
pub async fn post_event(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConversationPath { tenant, id }: ConversationPath,
    JsonBody(body, _): JsonBody,
) -> ApiResult<Response> {
    let EventPostInput { kind, data } = EventPostInput::from_json(&body)?;
    state
        .readable_conversation(&principal, &tenant, &id)
        .await?;
    if !principal.is_service() {
        return Err(ApiError::Forbidden);
    }
    let topic = Topic::Conversation(tenant, id);
    let hub = state.cache.events().clone();
    let id = run_detached(async move { hub.publish(&topic, EventBody::new(kind, data)).await })
        .await
        .flatten();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(EventAccepted {
            id: id.map(|i| i.to_string()),
        }),
    )
        .into_response())
}

impl EventPostInput {
    /// One error per field; `data` at most `MAX_EVENT_DATA_BYTES` as JSON text.
    fn from_json(body: &Value) -> ApiResult<Self> {
        let field = ApiError::field;
        let object = body
            .as_object()
            .ok_or_else(|| field("body", "must be a JSON object"))?;
        if let Some(unknown) = object.keys().find(|k| *k != "type" && *k != "data") {
            return Err(field(unknown, "unknown field"));
        }
        let kind = object
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| field("type", "required, a string"))?;
        let well_formed = (1..=64).contains(&kind.len())
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !well_formed {
            return Err(field("type", "1-64 characters of [A-Za-z0-9._:-]"));
        }
        let reserved = kind == copilot_cache::events::RESYNC
            || ["message.", "conversation.", "member."]
                .iter()
                .any(|p| kind.starts_with(p));
        if reserved {
            return Err(field("type", "this event type is reserved for the service"));
        }
        let data = serde_json::to_string(object.get("data").unwrap_or(&Value::Null))
            .map_err(|_| ApiError::Internal)?;
        if data.len() > MAX_EVENT_DATA_BYTES {
            return Err(ApiError::PayloadTooLarge(format!(
                "data exceeds {MAX_EVENT_DATA_BYTES} bytes"
            )));
        }
        Ok(Self {
            kind: kind.to_owned(),
            data,
        })
    }
}

/// The subscription of a stream, plus the tenant's access topic for users (a suspension ends
/// their streams).
async fn subscribe(
    state: &AppState,
    principal: &Principal,
    topic: Topic,
    last: Option<Result<EventId, ()>>,
) -> Subscription {
    // Membership decides access only where it is required.
    let access = match principal {
        Principal::User(u) if state.service.require_membership => {
            Some(Topic::Access(u.tenant_id.clone()))
        }
        _ => None,
    };
    state
        .cache
        .events()
        .subscribe(&topic, access.as_ref(), last)
        .await
}

fn sse(stream: Stream) -> Response {
    let events = futures::stream::unfold(stream, |mut s| async move {
        s.next_event().await.map(|e| (Ok::<_, Infallible>(e), s))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response()
}

enum Filter {
    /// The conversation as this subscriber last saw it.
    Conversation(Box<Conversation>),
    List(ListViewer),
}

/// One subscriber's view of the events: the read rule applied to each.
struct Stream {
    subscription: Subscription,
    principal: Principal,
    filter: Filter,
    /// Events to send before reading the next one (e.g. `conversation.removed` after a delete).
    queued: Vec<SseEvent>,
    ended: bool,
}

/// `member.changed` data.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberChanged {
    user_id: UserId,
    active: bool,
}

impl Stream {
    async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.queued.pop() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            let event = self.subscription.next().await?;
            if let Some(out) = self.view(&event) {
                return Some(out);
            }
        }
    }

    /// What this subscriber sees of `event`, if anything; may end the stream.
    fn view(&mut self, event: &Arc<Event>) -> Option<SseEvent> {
        if event.is_resync() {
            return Some(SseEvent::default().event("resync").data("{}"));
        }
        if event.body.kind == MEMBER_CHANGED {
            let change: MemberChanged = serde_json::from_str(&event.body.data).ok()?;
            let me = self.principal.user_id()?;
            if &change.user_id != me || change.active {
                return None;
            }
            // This user lost the tenant: nothing more, and the conversation is gone from view.
            self.ended = true;
            return match &self.filter {
                Filter::Conversation(c) => Some(removed(&c.id)),
                Filter::List(_) => None,
            };
        }
        let out = sse_event(event);
        match &mut self.filter {
            Filter::Conversation(current) => match event.body.kind.as_str() {
                CONVERSATION_UPDATED => {
                    let after = event.body.after.as_deref()?;
                    if can_read(&self.principal, after) {
                        **current = after.clone();
                        Some(out)
                    } else {
                        self.ended = true;
                        Some(removed(&current.id))
                    }
                }
                CONVERSATION_DELETED => {
                    self.ended = true;
                    self.queued.push(removed(&current.id));
                    Some(out)
                }
                _ => Some(out),
            },
            Filter::List(viewer) => {
                let could = event
                    .body
                    .before
                    .as_deref()
                    .is_some_and(|c| viewer.can_see(c));
                let can = event
                    .body
                    .after
                    .as_deref()
                    .is_some_and(|c| viewer.can_see(c));
                let id = event
                    .body
                    .after
                    .as_deref()
                    .or(event.body.before.as_deref())
                    .map(|c| c.id)?;
                if event.body.kind == CONVERSATION_DELETED {
                    if !could {
                        return None;
                    }
                    self.queued.push(removed(&id));
                    return Some(out);
                }
                match (could, can) {
                    (_, true) => Some(out),
                    (true, false) => Some(removed(&id)),
                    (false, false) => None,
                }
            }
        }
    }
}

fn sse_event(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.id.to_string())
        .event(event.body.kind.as_str())
        .data(event.body.data.as_str())
}

fn removed(id: &ConversationId) -> SseEvent {
    SseEvent::default()
        .event(CONVERSATION_REMOVED)
        .data(json!({ "id": id }).to_string())
}

const MESSAGE_APPENDED: &str = "message.appended";
const MESSAGE_DELETED: &str = "message.deleted";
const CONVERSATION_CREATED: &str = "conversation.created";
const CONVERSATION_UPDATED: &str = "conversation.updated";
const CONVERSATION_ARCHIVED: &str = "conversation.archived";
const CONVERSATION_UNARCHIVED: &str = "conversation.unarchived";
const CONVERSATION_DELETED: &str = "conversation.deleted";
const CONVERSATION_REMOVED: &str = "conversation.removed";
const MEMBER_CHANGED: &str = "member.changed";

/// Runs `work` in its own task and waits for it: a client that disconnects cannot cancel it
/// half-way (the write it reports on is committed either way).
async fn run_detached<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    tokio::spawn(work).await.ok()
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// The events a committed conversation write causes. A publish never fails the write.
pub(crate) enum Change<'a> {
    Created(&'a Conversation),
    Updated {
        before: &'a Conversation,
        after: &'a Conversation,
    },
    Deleted(&'a Conversation),
    /// The write carries the message and the conversation after it; `before` is as it was.
    MessageAppended(&'a MessageWrite, &'a Conversation),
    MessageDeleted(&'a MessageWrite, &'a Conversation),
}

/// Publishes what `change` means for the conversation's stream and for the tenant's list.
pub(crate) async fn publish(hub: &EventHub, change: Change<'_>) {
    let list_event = |kind: &str, before: Option<&Conversation>, after: Option<&Conversation>| {
        let shown = after.or(before).map(to_json).unwrap_or_default();
        EventBody {
            kind: kind.to_owned(),
            data: shown,
            before: before.cloned().map(Box::new),
            after: after.cloned().map(Box::new),
        }
    };
    // A message write changes the conversation too (count, lastMessageAt): its list entry moves.
    let message_list_event = |write: &MessageWrite, before: &Conversation| {
        let after = &write.conversation;
        let event = list_event(CONVERSATION_UPDATED, Some(before), Some(after));
        (after.tenant_id.clone(), after.id, event)
    };
    let mut conversation_events: Vec<EventBody> = Vec::new();
    let (tenant, id, list) = match change {
        Change::Created(c) => (
            c.tenant_id.clone(),
            c.id,
            list_event(CONVERSATION_CREATED, None, Some(c)),
        ),
        Change::Updated { before, after } => {
            conversation_events.push(EventBody {
                after: Some(Box::new(after.clone())),
                ..EventBody::new(CONVERSATION_UPDATED, to_json(after))
            });
            let kind = match (before.is_archived(), after.is_archived()) {
                (false, true) => CONVERSATION_ARCHIVED,
                (true, false) => CONVERSATION_UNARCHIVED,
                _ => CONVERSATION_UPDATED,
            };
            (
                after.tenant_id.clone(),
                after.id,
                list_event(kind, Some(before), Some(after)),
            )
        }
        Change::Deleted(c) => {
            conversation_events.push(EventBody::new(
                CONVERSATION_DELETED,
                json!({ "id": c.id }).to_string(),
            ));
            (
                c.tenant_id.clone(),
                c.id,
                list_event(CONVERSATION_DELETED, Some(c), None),
            )
        }
        Change::MessageAppended(write, before) => {
            conversation_events.push(EventBody::new(MESSAGE_APPENDED, to_json(&write.message)));
            message_list_event(write, before)
        }
        Change::MessageDeleted(write, before) => {
            let deleted = json!({ "messageId": write.message.id, "seq": write.message.seq });
            conversation_events.push(EventBody::new(MESSAGE_DELETED, deleted.to_string()));
            message_list_event(write, before)
        }
    };
    let hub = hub.clone();
    let conversation_topic = Topic::Conversation(tenant.clone(), id);
    let list_topic = Topic::List(tenant);
    run_detached(async move {
        let on_conversation = async {
            for body in conversation_events {
                hub.publish(&conversation_topic, body).await;
            }
        };
        futures::join!(on_conversation, hub.publish(&list_topic, list));
    })
    .await;
}

/// Tells the tenant's streams that `user`'s membership changed (an inactive one ends them).
pub(crate) async fn publish_member_change(
    hub: &EventHub,
    tenant: &TenantId,
    user: &UserId,
    active: bool,
) {
    let body = EventBody::new(
        MEMBER_CHANGED,
        to_json(&MemberChanged {
            user_id: user.clone(),
            active,
        }),
    );
    let hub = hub.clone();
    let topic = Topic::Access(tenant.clone());
    run_detached(async move { hub.publish(&topic, body).await }).await;
}
