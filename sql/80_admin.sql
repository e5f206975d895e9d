-- Administration functions for the `chatd` command line (docs/client.md):
-- identities, providers, models and spend limits. They write tables
-- directly, so they are SECURITY DEFINER and executable by nobody but the
-- owner (and roles it grants them to explicitly); chatd_app and
-- chatd_worker never get them.
--
--   admin_resolve_identity   user and organization by name or id (creates
--                            them, and the membership, when p_create)
--   admin_upsert_provider    add or update a provider by name
--   admin_upsert_model       add or update a model config by (provider, model)
--   admin_set_usage_limits   the usage-limit config (NULL keeps a setting)
--   admin_set_user_limit     a user's personal spend limit (NULL clears it)
--   admin_set_group_limit    a group's spend limit (NULL clears it)
--
-- Unknown names raise CD007.

-- A user or organization reference: a uuid, or a name.
CREATE OR REPLACE FUNCTION chatd._admin_is_uuid(p_ref text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT p_ref ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
$$;

CREATE OR REPLACE FUNCTION chatd.admin_resolve_identity(
    p_user text,
    p_organization text DEFAULT NULL,
    p_create boolean DEFAULT FALSE
)
RETURNS TABLE (user_id uuid, organization_id uuid)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_user uuid;
    v_org uuid;
BEGIN
    IF p_user IS NULL OR length(p_user) = 0 THEN
        RAISE EXCEPTION 'invalid user: a user name or id is required' USING ERRCODE = 'CD007';
    END IF;
    IF chatd._admin_is_uuid(p_user) THEN
        SELECT u.id INTO v_user FROM chatd.users AS u WHERE u.id = p_user::uuid;
    ELSE
        SELECT u.id INTO v_user FROM chatd.users AS u WHERE u.username = p_user;
        IF v_user IS NULL AND p_create THEN
            INSERT INTO chatd.users (username) VALUES (p_user)
            ON CONFLICT (username) DO NOTHING;
            SELECT u.id INTO v_user FROM chatd.users AS u WHERE u.username = p_user;
        END IF;
    END IF;
    IF v_user IS NULL THEN
        RAISE EXCEPTION 'invalid user: % not found', p_user USING ERRCODE = 'CD007';
    END IF;

    IF p_organization IS NULL OR length(p_organization) = 0 THEN
        -- the user's organization when there is exactly one
        SELECT min(om.organization_id::text)::uuid INTO v_org
        FROM chatd.organization_members AS om WHERE om.user_id = v_user
        HAVING count(*) = 1;
        IF v_org IS NULL THEN
            RAISE EXCEPTION 'invalid organization: user % belongs to no or several organizations; name one', p_user
                USING ERRCODE = 'CD007';
        END IF;
    ELSIF chatd._admin_is_uuid(p_organization) THEN
        SELECT o.id INTO v_org FROM chatd.organizations AS o WHERE o.id = p_organization::uuid;
    ELSE
        SELECT o.id INTO v_org FROM chatd.organizations AS o WHERE o.name = p_organization;
        IF v_org IS NULL AND p_create THEN
            INSERT INTO chatd.organizations (name) VALUES (p_organization)
            ON CONFLICT (name) DO NOTHING;
            SELECT o.id INTO v_org FROM chatd.organizations AS o WHERE o.name = p_organization;
        END IF;
    END IF;
    IF v_org IS NULL THEN
        RAISE EXCEPTION 'invalid organization: % not found', p_organization USING ERRCODE = 'CD007';
    END IF;

    IF p_create THEN
        INSERT INTO chatd.organization_members (organization_id, user_id)
        VALUES (v_org, v_user)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN QUERY SELECT v_user, v_org;
END
$$;

-- p_auth_header: how the worker sends the key, 'bearer' or 'x-api-key'
-- (NULL: what the kind's API documents); CD007 for anything else.
-- p_stream_usage: FALSE for a Chat Completions server that rejects or
-- ignores stream_options (usage is then estimated); NULL: TRUE.
-- p_api: the HTTP API ('chat_completions' or 'responses' for the OpenAI
-- kinds, 'messages' for anthropic; NULL: the kind's default); CD007 for
-- anything else or an API of the other kind.
DROP FUNCTION IF EXISTS chatd.admin_upsert_provider(text, chatd.provider_kind, text, text, boolean);
DROP FUNCTION IF EXISTS chatd.admin_upsert_provider(
    text, chatd.provider_kind, text, text, boolean, text, boolean
);
CREATE OR REPLACE FUNCTION chatd.admin_upsert_provider(
    p_name text,
    p_kind chatd.provider_kind,
    p_base_url text DEFAULT NULL,
    p_api_key_env text DEFAULT NULL,
    p_enabled boolean DEFAULT TRUE,
    p_auth_header text DEFAULT NULL,
    p_stream_usage boolean DEFAULT NULL,
    p_api text DEFAULT NULL
)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    IF p_auth_header IS NOT NULL AND p_auth_header NOT IN ('bearer', 'x-api-key') THEN
        RAISE EXCEPTION 'invalid auth header %: expected bearer or x-api-key', left(p_auth_header, 100)
            USING ERRCODE = 'CD007';
    END IF;
    IF p_api IS NOT NULL AND p_api NOT IN ('chat_completions', 'responses', 'messages') THEN
        RAISE EXCEPTION 'invalid api %: expected chat_completions, responses or messages', left(p_api, 100)
            USING ERRCODE = 'CD007';
    END IF;
    IF p_api IS NOT NULL AND (p_kind = 'anthropic') <> (p_api = 'messages') THEN
        RAISE EXCEPTION 'invalid api % for provider kind %: %', p_api, p_kind,
            CASE WHEN p_kind = 'anthropic' THEN 'anthropic speaks messages'
                ELSE 'an OpenAI kind speaks chat_completions or responses' END
            USING ERRCODE = 'CD007';
    END IF;
    INSERT INTO chatd.providers AS p (name, kind, base_url, api_key_env, enabled, auth_header, stream_usage, api)
    VALUES (
        p_name, p_kind, p_base_url, p_api_key_env, coalesce(p_enabled, TRUE), p_auth_header, p_stream_usage, p_api
    )
    ON CONFLICT (name) DO UPDATE
        SET kind = excluded.kind,
            base_url = excluded.base_url,
            api_key_env = excluded.api_key_env,
            enabled = excluded.enabled,
            auth_header = excluded.auth_header,
            stream_usage = excluded.stream_usage,
            api = excluded.api
    RETURNING p.id INTO v_id;
    RETURN v_id;
END
$$;

-- p_thinking_budget_tokens: Anthropic extended thinking (NULL: off); CD007
-- unless the provider is anthropic, the budget at least 1024 (the
-- Messages API's minimum) and below p_max_output_tokens. p_agents: chats
-- on this model may spawn sub-agents (docs/agents.md).
DROP FUNCTION IF EXISTS chatd.admin_upsert_model(
    text, text, text, integer, integer, numeric, numeric, numeric, numeric, boolean, boolean
);
DROP FUNCTION IF EXISTS chatd.admin_upsert_model(
    text, text, text, integer, integer, numeric, numeric, numeric, numeric, boolean, boolean, integer
);
CREATE OR REPLACE FUNCTION chatd.admin_upsert_model(
    p_provider text,
    p_model text,
    p_display_name text DEFAULT NULL,
    p_context_limit integer DEFAULT 128000,
    p_max_output_tokens integer DEFAULT 4096,
    p_input_price numeric DEFAULT NULL,
    p_output_price numeric DEFAULT NULL,
    p_cache_read_price numeric DEFAULT NULL,
    p_cache_write_price numeric DEFAULT NULL,
    p_is_default boolean DEFAULT FALSE,
    p_enabled boolean DEFAULT TRUE,
    p_thinking_budget_tokens integer DEFAULT NULL,
    p_agents boolean DEFAULT FALSE
)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_provider uuid;
    v_kind chatd.provider_kind;
    v_id uuid;
BEGIN
    IF chatd._admin_is_uuid(p_provider) THEN
        SELECT p.id, p.kind INTO v_provider, v_kind FROM chatd.providers AS p WHERE p.id = p_provider::uuid;
    ELSE
        SELECT p.id, p.kind INTO v_provider, v_kind FROM chatd.providers AS p WHERE p.name = p_provider;
    END IF;
    IF v_provider IS NULL THEN
        RAISE EXCEPTION 'invalid provider: % not found', p_provider USING ERRCODE = 'CD007';
    END IF;
    IF p_thinking_budget_tokens IS NOT NULL THEN
        IF v_kind <> 'anthropic' THEN
            RAISE EXCEPTION 'invalid thinking budget: extended thinking is for anthropic providers, % is %',
                p_provider, v_kind
                USING ERRCODE = 'CD007';
        END IF;
        IF p_thinking_budget_tokens < 1024 THEN
            RAISE EXCEPTION 'invalid thinking budget %: at least 1024 tokens', p_thinking_budget_tokens
                USING ERRCODE = 'CD007';
        END IF;
        IF p_thinking_budget_tokens >= p_max_output_tokens THEN
            RAISE EXCEPTION 'invalid thinking budget %: must be below max_output_tokens (%)',
                p_thinking_budget_tokens, p_max_output_tokens
                USING ERRCODE = 'CD007';
        END IF;
    END IF;
    IF coalesce(p_is_default, FALSE) THEN
        UPDATE chatd.model_configs AS m SET is_default = FALSE
        WHERE m.is_default AND NOT (m.provider_id = v_provider AND m.model = p_model);
    END IF;
    INSERT INTO chatd.model_configs AS m (
        provider_id, model, display_name, context_limit, max_output_tokens,
        input_price_per_mtok, output_price_per_mtok,
        cache_read_price_per_mtok, cache_write_price_per_mtok, is_default, enabled, thinking_budget_tokens,
        agents
    )
    VALUES (
        v_provider, p_model, coalesce(p_display_name, p_model), p_context_limit, p_max_output_tokens,
        p_input_price, p_output_price, p_cache_read_price, p_cache_write_price,
        coalesce(p_is_default, FALSE), coalesce(p_enabled, TRUE), p_thinking_budget_tokens,
        coalesce(p_agents, FALSE)
    )
    ON CONFLICT (provider_id, model) DO UPDATE
        SET display_name = excluded.display_name,
            context_limit = excluded.context_limit,
            max_output_tokens = excluded.max_output_tokens,
            input_price_per_mtok = excluded.input_price_per_mtok,
            output_price_per_mtok = excluded.output_price_per_mtok,
            cache_read_price_per_mtok = excluded.cache_read_price_per_mtok,
            cache_write_price_per_mtok = excluded.cache_write_price_per_mtok,
            is_default = excluded.is_default,
            enabled = excluded.enabled,
            thinking_budget_tokens = excluded.thinking_budget_tokens,
            agents = excluded.agents
    RETURNING m.id INTO v_id;
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION chatd.admin_set_usage_limits(
    p_enabled boolean DEFAULT NULL,
    p_default_limit_micros bigint DEFAULT NULL,
    p_period chatd.spend_period DEFAULT NULL,
    p_clear_default boolean DEFAULT FALSE
)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    UPDATE chatd.usage_limit_config AS c
    SET enabled = coalesce(p_enabled, c.enabled),
        default_limit_micros = CASE
            WHEN p_clear_default THEN NULL
            ELSE coalesce(p_default_limit_micros, c.default_limit_micros)
        END,
        period = coalesce(p_period, c.period),
        updated_at = now()
    WHERE c.singleton;
END
$$;

CREATE OR REPLACE FUNCTION chatd.admin_set_user_limit(p_user text, p_limit_micros bigint)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    UPDATE chatd.users AS u SET chat_spend_limit_micros = p_limit_micros
    WHERE (chatd._admin_is_uuid(p_user) AND u.id = p_user::uuid) OR u.username = p_user
    RETURNING u.id INTO v_id;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'invalid user: % not found', p_user USING ERRCODE = 'CD007';
    END IF;
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION chatd.admin_set_group_limit(p_organization text, p_group text, p_limit_micros bigint)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    UPDATE chatd.groups AS g SET chat_spend_limit_micros = p_limit_micros
    FROM chatd.organizations AS o
    WHERE
        o.id = g.organization_id
        AND ((chatd._admin_is_uuid(p_organization) AND o.id = p_organization::uuid) OR o.name = p_organization)
        AND ((chatd._admin_is_uuid(p_group) AND g.id = p_group::uuid) OR g.name = p_group)
    RETURNING g.id INTO v_id;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'invalid group: % not found in organization %', p_group, p_organization
            USING ERRCODE = 'CD007';
    END IF;
    RETURN v_id;
END
$$;

-- Functions are executable by PUBLIC by default: these must not be.
REVOKE ALL ON FUNCTION chatd.admin_resolve_identity(text, text, boolean) FROM public;
REVOKE ALL ON FUNCTION chatd.admin_upsert_provider(
    text, chatd.provider_kind, text, text, boolean, text, boolean, text
) FROM public;
REVOKE ALL ON FUNCTION chatd.admin_upsert_model(
    text, text, text, integer, integer, numeric, numeric, numeric, numeric, boolean, boolean, integer, boolean
) FROM public;
REVOKE ALL ON FUNCTION chatd.admin_set_usage_limits(boolean, bigint, chatd.spend_period, boolean) FROM public;
REVOKE ALL ON FUNCTION chatd.admin_set_user_limit(text, bigint) FROM public;
REVOKE ALL ON FUNCTION chatd.admin_set_group_limit(text, text, bigint) FROM public;
