-- The change log (cache outbox): one row per committed write, written in the write's own
-- transaction, so a cache invalidation lost in a crash is re-sent by whoever drains it.
CREATE TABLE changes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL CHECK (kind IN ('policy', 'config', 'conversation', 'membership')),
    tenant_id  TEXT,
    subject    TEXT,
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX changes_created ON changes (created_at);
