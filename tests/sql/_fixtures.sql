-- Test fixture factories, loaded into the migrated template database by the
-- harness (tests/conftest.py); never part of a production install. Every
-- argument has a default, so a test names only what it cares about:
--     SELECT chatd_test.chat(chatd_test.user(chatd_test.org()));
-- Python tests reach the same factories through chatd.testing.Factory.

CREATE SCHEMA chatd_test;

CREATE SEQUENCE chatd_test.serial;

CREATE FUNCTION chatd_test.next_name(p_prefix text) RETURNS text
LANGUAGE sql AS $$
    SELECT p_prefix || '-' || nextval('chatd_test.serial')
$$;

CREATE FUNCTION chatd_test.org(p_name text DEFAULT NULL) RETURNS uuid
LANGUAGE sql AS $$
    INSERT INTO chatd.organizations (name)
    VALUES (coalesce(p_name, chatd_test.next_name('org')))
    RETURNING id
$$;

CREATE FUNCTION chatd_test.member(p_org uuid, p_user uuid) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO chatd.organization_members (organization_id, user_id)
    VALUES (p_org, p_user)
    ON CONFLICT DO NOTHING
$$;

-- A user, a member of p_org when given.
CREATE FUNCTION chatd_test.user(
    p_org uuid DEFAULT NULL,
    p_limit_micros bigint DEFAULT NULL,
    p_name text DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    INSERT INTO chatd.users (username, chat_spend_limit_micros)
    VALUES (coalesce(p_name, chatd_test.next_name('user')), p_limit_micros)
    RETURNING id INTO v_id;
    IF p_org IS NOT NULL THEN
        PERFORM chatd_test.member(p_org, v_id);
    END IF;
    RETURN v_id;
END
$$;

-- A group of p_org with the given members (made members of p_org too).
CREATE FUNCTION chatd_test.grp(
    p_org uuid,
    p_limit_micros bigint DEFAULT NULL,
    p_members uuid[] DEFAULT '{}',
    p_name text DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_user uuid;
BEGIN
    INSERT INTO chatd.groups (organization_id, name, chat_spend_limit_micros)
    VALUES (p_org, coalesce(p_name, chatd_test.next_name('group')), p_limit_micros)
    RETURNING id INTO v_id;
    FOREACH v_user IN ARRAY p_members LOOP
        PERFORM chatd_test.member(p_org, v_user);
        INSERT INTO chatd.group_members (organization_id, group_id, user_id)
        VALUES (p_org, v_id, v_user);
    END LOOP;
    RETURN v_id;
END
$$;

CREATE FUNCTION chatd_test.workspace(p_org uuid, p_name text DEFAULT NULL) RETURNS uuid
LANGUAGE sql AS $$
    INSERT INTO chatd.workspaces (organization_id, name)
    VALUES (p_org, coalesce(p_name, chatd_test.next_name('workspace')))
    RETURNING id
$$;

CREATE FUNCTION chatd_test.provider(
    p_kind chatd.provider_kind DEFAULT 'openai-compat',
    p_base_url text DEFAULT 'http://127.0.0.1:9/v1',
    p_api_key_env text DEFAULT NULL,
    p_name text DEFAULT NULL
) RETURNS uuid
LANGUAGE sql AS $$
    INSERT INTO chatd.providers (name, kind, base_url, api_key_env)
    VALUES (coalesce(p_name, chatd_test.next_name('provider')), p_kind, p_base_url, p_api_key_env)
    RETURNING id
$$;

-- A model config; a new openai-compat provider when none is given. Prices
-- in USD per million tokens (NULL: unpriced).
CREATE FUNCTION chatd_test.model_config(
    p_provider uuid DEFAULT NULL,
    p_input_price numeric DEFAULT 1,
    p_output_price numeric DEFAULT 2,
    p_cache_read_price numeric DEFAULT NULL,
    p_cache_write_price numeric DEFAULT NULL,
    p_is_default boolean DEFAULT FALSE,
    p_model text DEFAULT NULL,
    p_max_output_tokens integer DEFAULT 1024
) RETURNS uuid
LANGUAGE sql AS $$
    INSERT INTO chatd.model_configs (
        provider_id, model, display_name, context_limit, max_output_tokens,
        input_price_per_mtok, output_price_per_mtok,
        cache_read_price_per_mtok, cache_write_price_per_mtok, is_default
    )
    VALUES (
        coalesce(p_provider, chatd_test.provider()),
        coalesce(p_model, chatd_test.next_name('model')),
        'Test model', 128000, p_max_output_tokens,
        p_input_price, p_output_price, p_cache_read_price, p_cache_write_price, p_is_default
    )
    RETURNING id
$$;

-- A pending chat row with one user message, inserted directly (no admission
-- check, no create_chat). For tests of create_chat itself, call create_chat.
CREATE FUNCTION chatd_test.chat(
    p_owner uuid,
    p_org uuid DEFAULT NULL,
    p_model uuid DEFAULT NULL,
    p_text text DEFAULT 'hello',
    p_parent uuid DEFAULT NULL,
    p_workspace uuid DEFAULT NULL,
    p_client_type chatd.client_type DEFAULT 'api'
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid := gen_random_uuid();
    v_org uuid;
    v_root uuid := v_id;
BEGIN
    v_org := coalesce(
        p_org,
        (SELECT organization_id FROM chatd.organization_members WHERE user_id = p_owner LIMIT 1)
    );
    IF v_org IS NULL THEN
        v_org := chatd_test.org();
        PERFORM chatd_test.member(v_org, p_owner);
    END IF;
    IF p_parent IS NOT NULL THEN
        SELECT root_chat_id INTO v_root FROM chatd.chats WHERE id = p_parent;
    END IF;
    INSERT INTO chatd.chats (
        id, organization_id, owner_id, workspace_id, parent_chat_id, root_chat_id,
        model_config_id, client_type
    )
    VALUES (
        v_id, v_org, p_owner, p_workspace, p_parent, v_root,
        coalesce(p_model, chatd_test.model_config()), p_client_type
    );
    IF p_text IS NOT NULL THEN
        PERFORM chatd_test.message(v_id, 'user', p_text);
    END IF;
    RETURN v_id;
END
$$;

-- A message row; cost and time settable for spend tests.
CREATE FUNCTION chatd_test.message(
    p_chat uuid,
    p_role chatd.message_role DEFAULT 'user',
    p_text text DEFAULT 'hello',
    p_cost_micros bigint DEFAULT NULL,
    p_created_at timestamptz DEFAULT now()
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO chatd.messages (chat_id, role, content, total_cost_micros, created_at, created_by, model_config_id)
    SELECT
        c.id, p_role, jsonb_build_array(jsonb_build_object('type', 'text', 'text', p_text)),
        p_cost_micros, p_created_at,
        CASE WHEN p_role = 'user' THEN c.owner_id END,
        CASE WHEN p_role = 'assistant' THEN c.model_config_id END
    FROM chatd.chats AS c WHERE c.id = p_chat
    RETURNING id
$$;
