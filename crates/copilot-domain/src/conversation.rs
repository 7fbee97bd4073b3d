//! Conversations and messages (DESIGN.md 3.5), their input documents and list queries (3.7).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Timestamp;
use crate::cursor::{CursorKey, ListCursor};
use crate::error::{Errors, InputError};
use crate::id::{ConversationId, MessageId, TenantId, UserId};
use crate::json::{Fields, body_object, char_len_between};
pub use crate::status::ConversationStatus;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_PERSONA_CHARS: usize = 200;
pub const MAX_JURISDICTIONS: usize = 50;
pub const MAX_JURISDICTION_CHARS: usize = 16;
/// Default for `COPILOT_MAX_MESSAGE_BYTES`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
pub const DEFAULT_CONVERSATION_LIMIT: u32 = 20;
pub const MAX_CONVERSATION_LIMIT: u32 = 100;
pub const DEFAULT_MESSAGE_LIMIT: u32 = 50;
pub const MAX_MESSAGE_LIMIT: u32 = 500;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ShareAudience {
    #[default]
    Private,
    Tenant,
    Public,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TenantAccess {
    #[default]
    View,
    Edit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    User,
    Assistant,
    System,
}

macro_rules! wire_enum {
    ($ty:ty { $($variant:ident = $wire:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $wire),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($wire => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

wire_enum!(ShareAudience { Private = "private", Tenant = "tenant", Public = "public" });
wire_enum!(TenantAccess { View = "view", Edit = "edit" });
wire_enum!(MessageRole { User = "user", Assistant = "assistant", System = "system" });
wire_enum!(ConversationStatus { Active = "active", Archived = "archived", All = "all" });

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: ConversationId,
    pub tenant_id: TenantId,
    /// The owner; `None` is a system conversation.
    pub user_id: Option<UserId>,
    pub title: Option<String>,
    pub persona_id: Option<String>,
    pub jurisdictions: Vec<String>,
    pub share_audience: ShareAudience,
    pub tenant_access: TenantAccess,
    pub archived_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_message_at: Option<DateTime<Utc>>,
    pub message_count: u64,
    pub version: u64,
}

impl Conversation {
    /// The list order key: `coalesce(lastMessageAt, createdAt)`.
    pub fn last_activity_at(&self) -> Timestamp {
        self.last_message_at.unwrap_or(self.created_at)
    }

    pub fn is_archived(&self) -> bool {
        self.archived_at.is_some()
    }

    /// The list cursor right after this conversation, in a listing of `status`.
    pub fn cursor(&self, status: ConversationStatus) -> ListCursor {
        ListCursor::after(status, self.last_activity_at().timestamp_micros(), self.id)
    }

    pub fn matches_status(&self, status: ConversationStatus) -> bool {
        match status {
            ConversationStatus::Active => !self.is_archived(),
            ConversationStatus::Archived => self.is_archived(),
            ConversationStatus::All => true,
        }
    }
}

/// A conversation to create, after access checks decided its owner.
#[derive(Clone, Debug, PartialEq)]
pub struct NewConversation {
    pub tenant_id: TenantId,
    pub user_id: Option<UserId>,
    pub title: Option<String>,
    pub persona_id: Option<String>,
    pub jurisdictions: Vec<String>,
    pub share_audience: ShareAudience,
    pub tenant_access: TenantAccess,
}

/// The body of `POST .../conversations`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema),
    serde(rename_all = "camelCase", deny_unknown_fields),
    schema(as = ConversationCreateInput,
        example = json!({"userId": "alice", "title": "First steps", "shareAudience": "tenant"})))]
pub struct CreateConversationRequest {
    /// Services only: the owner, or null for a system conversation. Members may give their own.
    // `None`: not given; `Some(None)`: explicitly `null`.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub user_id: Option<Option<UserId>>,
    #[cfg_attr(feature = "openapi", schema(max_length = 200))]
    pub title: Option<String>,
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 200))]
    pub persona_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<String>>, max_items = 50))]
    pub jurisdictions: Vec<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<ShareAudience>))]
    pub share_audience: ShareAudience,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<TenantAccess>))]
    pub tenant_access: TenantAccess,
}

impl CreateConversationRequest {
    pub fn from_json(body: &Value) -> Result<Self, InputError> {
        let (map, mut errors) = body_object(
            body,
            &[
                "userId",
                "title",
                "personaId",
                "jurisdictions",
                "shareAudience",
                "tenantAccess",
            ],
        )?;
        let user_id = match map.get("userId") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(_) => map.optional::<UserId>("userId", &mut errors).map(Some),
        };
        let title = parse_title(map, &mut errors);
        let persona_id: Option<String> = map.optional("personaId", &mut errors);
        if persona_id
            .as_deref()
            .is_some_and(|p| !char_len_between(p, 1, MAX_PERSONA_CHARS))
        {
            errors.push(
                "personaId",
                format!("must be 1-{MAX_PERSONA_CHARS} characters"),
            );
        }
        let jurisdictions: Vec<String> = map
            .optional("jurisdictions", &mut errors)
            .unwrap_or_default();
        if jurisdictions.len() > MAX_JURISDICTIONS {
            errors.push(
                "jurisdictions",
                format!("at most {MAX_JURISDICTIONS} codes"),
            );
        }
        for (i, code) in jurisdictions.iter().enumerate() {
            if !char_len_between(code, 1, MAX_JURISDICTION_CHARS) {
                errors.push(
                    format!("jurisdictions[{i}]"),
                    format!("must be 1-{MAX_JURISDICTION_CHARS} characters"),
                );
            }
        }
        let share_audience = map
            .optional("shareAudience", &mut errors)
            .unwrap_or_default();
        let tenant_access = map
            .optional("tenantAccess", &mut errors)
            .unwrap_or_default();
        errors.check()?;
        Ok(Self {
            user_id,
            title,
            persona_id,
            jurisdictions,
            share_audience,
            tenant_access,
        })
    }
}

fn parse_title(map: Fields<'_>, errors: &mut Errors) -> Option<String> {
    let title: Option<String> = map.optional("title", errors);
    if title
        .as_deref()
        .is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS)
    {
        errors.push("title", format!("at most {MAX_TITLE_CHARS} characters"));
    }
    title
}

/// The body of `PATCH .../conversations/{id}`: all changes apply in one atomic update.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema),
    serde(rename_all = "camelCase", deny_unknown_fields),
    schema(as = ConversationUpdateInput, example = json!({"title": "Renamed", "archived": false})))]
pub struct ConversationUpdate {
    /// null clears the title.
    // `Some(None)`: clear it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, max_length = 200))]
    pub title: Option<Option<String>>,
    pub share_audience: Option<ShareAudience>,
    pub tenant_access: Option<TenantAccess>,
    pub archived: Option<bool>,
}

impl ConversationUpdate {
    pub fn from_json(body: &Value) -> Result<Self, InputError> {
        let (map, mut errors) = body_object(
            body,
            &["title", "shareAudience", "tenantAccess", "archived"],
        )?;
        let title = match map.get("title") {
            None => None,
            Some(Value::Null) => Some(None),
            Some(_) => Some(parse_title(map, &mut errors)),
        };
        let share_audience = map.optional("shareAudience", &mut errors);
        let tenant_access = map.optional("tenantAccess", &mut errors);
        let archived = map.optional("archived", &mut errors);
        errors.check()?;
        Ok(Self {
            title,
            share_audience,
            tenant_access,
            archived,
        })
    }

    /// Whether the update changes sharing (which may revoke readers' access).
    pub fn changes_sharing(&self) -> bool {
        self.share_audience.is_some() || self.tenant_access.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: u64,
    pub role: MessageRole,
    /// `None` for a soft-deleted message (a tombstone).
    pub content: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Map<String, Value>,
    pub author_id: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub deleted_by: Option<String>,
}

impl Message {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}

/// The body of `POST .../messages`.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), serde(deny_unknown_fields),
    schema(as = MessageCreateInput,
        example = json!({"role": "user", "content": "Hello!", "metadata": {"client": "web"}})))]
pub struct MessageInput {
    pub role: MessageRole,
    /// At most COPILOT_MAX_MESSAGE_BYTES (256 KiB by default).
    pub content: String,
    /// A JSON object of at most 64 KiB.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Map<String, Value>,
}

impl MessageInput {
    pub fn from_json(body: &Value, max_content_bytes: usize) -> Result<Self, InputError> {
        let (map, mut errors) = body_object(body, &["role", "content", "metadata"])?;
        let role: Option<MessageRole> = map.required("role", &mut errors);
        let content: Option<String> = map.required("content", &mut errors);
        let metadata: Map<String, Value> =
            map.optional("metadata", &mut errors).unwrap_or_default();
        if content
            .as_ref()
            .is_some_and(|c| c.len() > max_content_bytes)
        {
            return Err(InputError::TooLarge {
                field: "content".into(),
                limit: max_content_bytes,
            });
        }
        if json_len(&metadata) > MAX_METADATA_BYTES {
            return Err(InputError::TooLarge {
                field: "metadata".into(),
                limit: MAX_METADATA_BYTES,
            });
        }
        errors.check()?;
        match (role, content) {
            (Some(role), Some(content)) => Ok(Self {
                role,
                content,
                metadata,
            }),
            _ => Err(InputError::field("content", "is required")),
        }
    }
}

fn json_len(map: &Map<String, Value>) -> usize {
    serde_json::to_vec(map)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

/// A message to append, with its author (the calling user, or none for a service).
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    pub role: MessageRole,
    pub content: String,
    pub metadata: Map<String, Value>,
    pub author_id: Option<UserId>,
}

/// Who is listing: the access rule of DESIGN.md 3.6 as part of the list query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListViewer {
    /// A service principal: every conversation of the tenant.
    Everyone,
    /// A tenant member: system conversations, their own, and those shared beyond private.
    User(UserId),
}

impl ListViewer {
    /// The same rule the stores express in SQL (for backends that filter in code).
    pub fn can_see(&self, c: &Conversation) -> bool {
        match self {
            Self::Everyone => true,
            Self::User(me) => match &c.user_id {
                None => true,
                Some(owner) => owner == me || c.share_audience != ShareAudience::Private,
            },
        }
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct QueryError(pub String);

/// `GET .../conversations` after validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ConversationQuery {
    pub tenant_id: TenantId,
    pub viewer: ListViewer,
    pub status: ConversationStatus,
    pub limit: u32,
    pub after: Option<ListCursor>,
    /// Signs the page's `nextCursor` (the server's key; the default in library use).
    pub cursor_key: CursorKey,
}

impl ConversationQuery {
    /// Validates `limit` (1-100, never clamped) and that the cursor belongs to this listing.
    pub fn new(
        tenant_id: TenantId,
        viewer: ListViewer,
        status: ConversationStatus,
        limit: Option<u32>,
        after: Option<ListCursor>,
    ) -> Result<Self, QueryError> {
        let limit = limit.unwrap_or(DEFAULT_CONVERSATION_LIMIT);
        if !(1..=MAX_CONVERSATION_LIMIT).contains(&limit) {
            return Err(QueryError(format!(
                "limit must be between 1 and {MAX_CONVERSATION_LIMIT}"
            )));
        }
        Ok(Self {
            tenant_id,
            viewer,
            status,
            limit,
            after,
            cursor_key: CursorKey::default(),
        })
    }

    /// The key that signs this listing's next cursor.
    pub fn with_cursor_key(mut self, key: CursorKey) -> Self {
        self.cursor_key = key;
        self
    }

    /// Whether `c` comes strictly after the cursor in list order.
    pub fn is_after_cursor(&self, c: &Conversation) -> bool {
        match &self.after {
            None => true,
            Some(cur) => {
                (c.last_activity_at().timestamp_micros(), c.id) < (cur.last_activity_micros, cur.id)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ConversationPage {
    pub items: Vec<Conversation>,
    pub next_cursor: Option<String>,
}

impl ConversationPage {
    /// Builds a page from `limit + 1` rows in list order: the extra row only says more exist.
    pub fn from_rows(mut rows: Vec<Conversation>, query: &ConversationQuery) -> Self {
        let more = rows.len() > query.limit as usize;
        rows.truncate(query.limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => Some(last.cursor(query.status).encode(&query.cursor_key)),
            _ => None,
        };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

/// `GET .../messages` after validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageQuery {
    pub limit: u32,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub include_deleted: bool,
}

impl MessageQuery {
    pub fn new(
        limit: Option<u32>,
        before: Option<u64>,
        after: Option<u64>,
        include_deleted: bool,
    ) -> Result<Self, QueryError> {
        let limit = limit.unwrap_or(DEFAULT_MESSAGE_LIMIT);
        if !(1..=MAX_MESSAGE_LIMIT).contains(&limit) {
            return Err(QueryError(format!(
                "limit must be between 1 and {MAX_MESSAGE_LIMIT}"
            )));
        }
        if before.or(after).is_some_and(|n| n > i64::MAX as u64) {
            return Err(QueryError(format!(
                "before and after must be at most {}",
                i64::MAX
            )));
        }
        if before.is_some() && after.is_some() {
            return Err(QueryError("give either before or after, not both".into()));
        }
        Ok(Self {
            limit,
            before,
            after,
            include_deleted,
        })
    }

    /// Newest `limit` messages (default), older than `before`, or oldest after `after`.
    pub fn latest(limit: u32) -> Self {
        Self {
            limit,
            before: None,
            after: None,
            include_deleted: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub items: Vec<Message>,
    /// The smallest `seq` returned when older messages exist, else `None`.
    pub next_before: Option<u64>,
}

/// What an append or a message delete changed: the message and the conversation after it.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageWrite {
    pub message: Message,
    pub conversation: Conversation,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn create_request_defaults_and_owner_forms() {
        let r = CreateConversationRequest::from_json(&json!({})).unwrap();
        assert_eq!(
            (r.user_id.clone(), r.share_audience, r.tenant_access),
            (None, ShareAudience::Private, TenantAccess::View)
        );
        let r = CreateConversationRequest::from_json(&json!({"userId": null})).unwrap();
        assert_eq!(r.user_id, Some(None));
        let r = CreateConversationRequest::from_json(
            &json!({"userId": "bob", "shareAudience": "public"}),
        )
        .unwrap();
        assert_eq!(r.user_id, Some(Some(UserId::parse("bob").unwrap())));
    }

    #[test]
    fn create_request_reports_each_bad_field() {
        let err = CreateConversationRequest::from_json(&json!({
            "userId": "no spaces", "title": "x".repeat(201), "jurisdictions": ["EU", "x".repeat(17)],
            "shareAudience": "everyone", "tenantAccess": "write", "color": "red"
        }))
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
                "color",
                "jurisdictions[1]",
                "shareAudience",
                "tenantAccess",
                "title",
                "userId"
            ]
        );
    }

    #[test]
    fn update_distinguishes_absent_and_null_title() {
        let u = ConversationUpdate::from_json(&json!({"archived": true})).unwrap();
        assert_eq!((u.title.clone(), u.archived), (None, Some(true)));
        let u = ConversationUpdate::from_json(&json!({"title": null})).unwrap();
        assert_eq!(u.title, Some(None));
        assert!(ConversationUpdate::from_json(&json!({"archived": "yes"})).is_err());
        assert!(ConversationUpdate::from_json(&json!({"userId": "x"})).is_err());
    }

    #[test]
    fn message_input_limits() {
        let m = MessageInput::from_json(&json!({"role": "user", "content": "hi"}), 10).unwrap();
        assert!(m.metadata.is_empty());
        let err = MessageInput::from_json(&json!({"role": "user", "content": "x".repeat(11)}), 10)
            .unwrap_err();
        assert!(matches!(err, InputError::TooLarge { ref field, limit: 10 } if field == "content"));
        let big = json!({"role": "user", "content": "", "metadata": {"k": "x".repeat(MAX_METADATA_BYTES)}});
        assert!(matches!(
            MessageInput::from_json(&big, 10).unwrap_err(),
            InputError::TooLarge { .. }
        ));
        let err =
            MessageInput::from_json(&json!({"role": "robot", "metadata": []}), 10).unwrap_err();
        assert_eq!(err.field_errors().len(), 3);
    }

    #[test]
    fn query_limits_are_validated() {
        assert!(MessageQuery::new(Some(500), None, None, false).is_ok());
        assert!(MessageQuery::new(Some(501), None, None, false).is_err());
        assert!(MessageQuery::new(None, Some(3), Some(1), false).is_err());
        assert_eq!(
            MessageQuery::new(None, None, None, false).unwrap().limit,
            DEFAULT_MESSAGE_LIMIT
        );
    }
}
