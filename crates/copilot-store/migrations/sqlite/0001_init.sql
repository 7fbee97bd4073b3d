-- copilot-state, SQLite schema v1. Timestamps are microseconds since the Unix epoch (INTEGER),
-- ids are lower-case hyphenated UUID text (lexical order = UUID order).

-- One monotonic version source for every write in this database, deletes included.
CREATE TABLE version_counter (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO version_counter (id, value) VALUES (1, 0);

CREATE TABLE tenant_llm_policies (
    tenant_id  TEXT PRIMARY KEY,
    document   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);

-- One row per level. '' stands for "no tenant" / "no user" (never a valid id), so the primary
-- key itself guarantees exactly one global row and one row per tenant and per (tenant, user).
CREATE TABLE conversation_configs (
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    patch      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (tenant_id, user_id),
    CHECK (tenant_id <> '' OR user_id = '')
);

CREATE TABLE conversations (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    user_id          TEXT,
    title            TEXT,
    persona_id       TEXT,
    jurisdictions    TEXT NOT NULL,
    share_audience   TEXT NOT NULL CHECK (share_audience IN ('private', 'tenant', 'public')),
    tenant_access    TEXT NOT NULL CHECK (tenant_access IN ('view', 'edit')),
    archived_at      INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_message_at  INTEGER,
    -- coalesce(last_message_at, created_at), kept in the same transaction as the message.
    last_activity_at INTEGER NOT NULL,
    message_count    INTEGER NOT NULL,
    last_seq         INTEGER NOT NULL,
    version          INTEGER NOT NULL
);
-- Serves the keyset list: WHERE tenant_id = ? AND (last_activity_at, id) < (?, ?) ORDER BY ... DESC.
CREATE INDEX conversations_list ON conversations (tenant_id, last_activity_at DESC, id DESC);

CREATE TABLE conversation_messages (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content         TEXT,
    metadata        TEXT NOT NULL,
    author_id       TEXT,
    created_at      INTEGER NOT NULL,
    deleted_at      INTEGER,
    deleted_by      TEXT,
    UNIQUE (conversation_id, seq)
);

CREATE TABLE tenant_memberships (
    tenant_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('member', 'admin')),
    status     TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
