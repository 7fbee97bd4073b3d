-- The change log (cache outbox): one row per committed write, written in the write's own
-- transaction, so a cache invalidation lost in a crash is re-sent by whoever drains it.
CREATE TABLE copilot.changes (
    id         bigserial PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('policy', 'config', 'conversation', 'membership')),
    tenant_id  text,
    subject    text,
    version    bigint NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX changes_created ON copilot.changes (created_at);
ALTER TABLE copilot.changes ENABLE ROW LEVEL SECURITY;
GRANT ALL ON copilot.changes TO service_role;
GRANT USAGE ON SEQUENCE copilot.changes_id_seq TO service_role;
CREATE POLICY service_all ON copilot.changes FOR ALL TO service_role USING (true) WITH CHECK (true);
