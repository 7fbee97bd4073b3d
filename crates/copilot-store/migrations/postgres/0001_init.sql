-- copilot-state, PostgreSQL schema v1 (PostgreSQL 15 or later: NULLS NOT DISTINCT).
-- Everything lives in schema copilot. Runs unchanged on plain PostgreSQL and on Supabase: the
-- Supabase roles and auth.jwt() are created only when missing.

CREATE SCHEMA IF NOT EXISTS copilot;

-- One monotonic version source for every write, deletes included (the cache relies on it).
CREATE SEQUENCE copilot.version_seq AS bigint;

CREATE TABLE copilot.tenant_llm_policies (
    tenant_id  text PRIMARY KEY,
    document   jsonb NOT NULL,
    version    bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by text NOT NULL
);

-- A real global row (tenant_id NULL); NULLS NOT DISTINCT makes duplicates impossible.
CREATE TABLE copilot.conversation_configs (
    tenant_id  text,
    user_id    text,
    patch      jsonb NOT NULL,
    version    bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by text NOT NULL,
    CONSTRAINT conversation_configs_level UNIQUE NULLS NOT DISTINCT (tenant_id, user_id),
    CONSTRAINT conversation_configs_user_needs_tenant CHECK (tenant_id IS NOT NULL OR user_id IS NULL)
);

CREATE TABLE copilot.conversations (
    id              uuid PRIMARY KEY,
    tenant_id       text NOT NULL,
    user_id         text,
    title           text,
    persona_id      text,
    jurisdictions   text[] NOT NULL DEFAULT '{}',
    share_audience  text NOT NULL CHECK (share_audience IN ('private', 'tenant', 'public')),
    tenant_access   text NOT NULL CHECK (tenant_access IN ('view', 'edit')),
    archived_at     timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    last_message_at timestamptz,
    message_count   bigint NOT NULL DEFAULT 0,
    last_seq        bigint NOT NULL DEFAULT 0,
    version         bigint NOT NULL
);
-- Matches the keyset order of the list: (lastActivityAt, id) descending within a tenant.
CREATE INDEX conversations_list
    ON copilot.conversations (tenant_id, coalesce(last_message_at, created_at) DESC, id DESC);

CREATE TABLE copilot.conversation_messages (
    id              uuid PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES copilot.conversations (id) ON DELETE CASCADE,
    tenant_id       text NOT NULL,
    seq             bigint NOT NULL,
    role            text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    content         text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    author_id       text,
    created_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    deleted_by      text,
    CONSTRAINT conversation_messages_seq UNIQUE (conversation_id, seq)
);

CREATE TABLE copilot.tenant_memberships (
    tenant_id  text NOT NULL,
    user_id    text NOT NULL,
    role       text NOT NULL CHECK (role IN ('member', 'admin')),
    status     text NOT NULL CHECK (status IN ('active', 'suspended')),
    version    bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

-- Supabase roles and auth.jwt(), only where missing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'service_role') THEN
        CREATE ROLE service_role NOLOGIN BYPASSRLS;
    END IF;
END
$$;

CREATE SCHEMA IF NOT EXISTS auth;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'auth' AND p.proname = 'jwt'
    ) THEN
        -- As Supabase's: the claims come from the request.jwt.claims setting.
        CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $f$
            SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
        $f$;
    END IF;
END
$$;

CREATE FUNCTION copilot.jwt_tenant() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT coalesce(auth.jwt() ->> 'tenant_id', auth.jwt() -> 'app_metadata' ->> 'tenant_id')
$$;

CREATE FUNCTION copilot.jwt_sub() RETURNS text LANGUAGE sql STABLE AS $$
    SELECT auth.jwt() ->> 'sub'
$$;

GRANT USAGE ON SCHEMA copilot TO authenticated, service_role;
GRANT USAGE ON SCHEMA auth TO authenticated, service_role;
GRANT SELECT ON ALL TABLES IN SCHEMA copilot TO authenticated;
GRANT ALL ON ALL TABLES IN SCHEMA copilot TO service_role;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA copilot TO service_role;

-- Row-level security: authenticated sessions read their own tenant only, and private
-- conversations (and their messages) only as their owner; service_role may do everything.
ALTER TABLE copilot.tenant_llm_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE copilot.conversation_configs ENABLE ROW LEVEL SECURITY;
ALTER TABLE copilot.conversations ENABLE ROW LEVEL SECURITY;
ALTER TABLE copilot.conversation_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE copilot.tenant_memberships ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenant_read ON copilot.tenant_llm_policies FOR SELECT TO authenticated
    USING (tenant_id = copilot.jwt_tenant());
CREATE POLICY service_all ON copilot.tenant_llm_policies FOR ALL TO service_role USING (true) WITH CHECK (true);

CREATE POLICY level_read ON copilot.conversation_configs FOR SELECT TO authenticated
    USING (tenant_id IS NULL
           OR (tenant_id = copilot.jwt_tenant() AND (user_id IS NULL OR user_id = copilot.jwt_sub())));
CREATE POLICY service_all ON copilot.conversation_configs FOR ALL TO service_role USING (true) WITH CHECK (true);

CREATE POLICY member_read ON copilot.conversations FOR SELECT TO authenticated
    USING (tenant_id = copilot.jwt_tenant()
           AND (user_id IS NULL OR user_id = copilot.jwt_sub() OR share_audience <> 'private'));
CREATE POLICY service_all ON copilot.conversations FOR ALL TO service_role USING (true) WITH CHECK (true);

CREATE POLICY member_read ON copilot.conversation_messages FOR SELECT TO authenticated
    USING (tenant_id = copilot.jwt_tenant() AND EXISTS (
        SELECT 1 FROM copilot.conversations c
        WHERE c.id = conversation_id
          AND (c.user_id IS NULL OR c.user_id = copilot.jwt_sub() OR c.share_audience <> 'private')));
CREATE POLICY service_all ON copilot.conversation_messages FOR ALL TO service_role USING (true) WITH CHECK (true);

CREATE POLICY tenant_read ON copilot.tenant_memberships FOR SELECT TO authenticated
    USING (tenant_id = copilot.jwt_tenant());
CREATE POLICY service_all ON copilot.tenant_memberships FOR ALL TO service_role USING (true) WITH CHECK (true);
