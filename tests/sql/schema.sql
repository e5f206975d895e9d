-- Schema of the migrations: tables, key columns, constraints, indexes.
BEGIN;
SELECT plan(42);

SELECT has_schema('chatd');
SELECT tables_are(
    'chatd',
    ARRAY[
        'organizations', 'users', 'organization_members', 'groups', 'group_members', 'workspaces',
        'providers', 'model_configs', 'chats', 'messages', 'queued_messages', 'stream_parts',
        'usage_limit_config', 'settings', 'workers', 'mcp_servers', 'spend_ledger'
    ]
);
SELECT enum_has_labels('chatd', 'chat_status', ARRAY['waiting', 'pending', 'running', 'error', 'requires_action', 'awaiting_agents']);
SELECT enum_has_labels('chatd', 'client_type', ARRAY['ui', 'api']);
SELECT enum_has_labels('chatd', 'provider_kind', ARRAY['openai', 'openai-compat', 'anthropic']);
SELECT enum_has_labels('chatd', 'message_role', ARRAY['system', 'user', 'assistant', 'tool']);
SELECT enum_has_labels('chatd', 'spend_period', ARRAY['day', 'week', 'month']);

SELECT col_not_null('chatd', 'chats', 'organization_id', 'a chat always has an organization');
SELECT col_type_is('chatd', 'chats', 'lease', 'bigint', 'col type is: chats lease bigint');
SELECT col_type_is('chatd', 'chats', 'version', 'bigint', 'col type is: chats version bigint');
SELECT col_type_is('chatd', 'chats', 'last_error', 'jsonb', 'col type is: chats last_error jsonb');
SELECT col_has_default('chatd', 'chats', 'client_type', 'col has default: chats client_type');
SELECT col_type_is('chatd', 'messages', 'id', 'bigint', 'col type is: messages id bigint');
SELECT col_type_is('chatd', 'messages', 'content', 'jsonb', 'col type is: messages content jsonb');
SELECT col_not_null('chatd', 'providers', 'kind', 'col not null: providers kind');
SELECT hasnt_column('chatd', 'providers', 'api_key', 'providers store no secret, only its env var name');
SELECT has_column('chatd', 'providers', 'api_key_env', 'has column: providers api_key_env');
SELECT has_column('chatd', 'users', 'chat_spend_limit_micros', 'has column: users chat_spend_limit_micros');

SELECT has_index('chatd', 'chats', 'chats_runnable_idx', 'claims use a partial index on runnable chats');
SELECT has_index('chatd', 'chats', 'chats_running_heartbeat_idx', 'recovery of chats whose worker has no row uses an index on running claims');
SELECT has_index('chatd', 'chats', 'chats_running_worker_idx', 'recovery finds a stale worker''s running chats by index');
SELECT is(
    (
        SELECT count(*) FROM pg_index AS i
        INNER JOIN pg_attribute AS a ON i.indrelid = a.attrelid AND a.attnum = any(i.indkey)
        WHERE i.indrelid = 'chatd.workers'::regclass AND a.attname = 'heartbeat_at'
    ),
    0::bigint,
    'workers.heartbeat_at is in no index (a heartbeat is a HOT update)'
);
SELECT has_index('chatd', 'model_configs', 'model_configs_one_default_idx', 'has index: model_configs model_configs_one_default_idx');
SELECT has_index('chatd', 'messages', 'messages_chat_idx', 'has index: messages messages_chat_idx');

SELECT is(
    (
        SELECT relpersistence::text
        FROM pg_class
        WHERE oid = 'chatd.stream_parts'::regclass
    ),
    'u',
    'stream_parts is UNLOGGED'
);
SELECT is((SELECT count(*)::int FROM chatd.settings), 1, 'settings has its singleton row');
SELECT is((SELECT count(*)::int FROM chatd.usage_limit_config), 1, 'usage_limit_config has its singleton row');
SELECT is(
    (SELECT enabled FROM chatd.usage_limit_config), FALSE, 'spend limits are disabled by default'
);

-- Bad rows are impossible.
SELECT throws_ok(
    $$INSERT INTO chatd.settings (singleton) VALUES (FALSE)$$, '23514', NULL, 'settings is a singleton'
);
SELECT throws_ok(
    $$UPDATE chatd.settings SET queue_limit = -1$$, '23514', NULL, 'a negative queue limit is refused'
);
SELECT throws_ok(
    $$INSERT INTO chatd.users (username, chat_spend_limit_micros) VALUES ('neg', -1)$$,
    '23514', NULL, 'a negative personal spend limit is refused'
);
SELECT throws_ok(
    format(
        $$INSERT INTO chatd.groups (organization_id, name, chat_spend_limit_micros) VALUES (%L, 'g', -5)$$,
        chatd_test.org()
    ),
    '23514', NULL, 'a negative group spend limit is refused'
);
SELECT throws_ok(
    $$SELECT chatd_test.model_config(p_input_price => -1)$$, '23514', NULL, 'a negative price is refused'
);
SELECT throws_ok(
    $$SELECT chatd_test.chat(chatd_test.user(chatd_test.org()), p_client_type => 'web')$$,
    '22P02', NULL, 'an unknown client type is refused'
);
SELECT lives_ok(
    $$SELECT chatd_test.model_config(p_is_default => TRUE)$$, 'one default model is allowed'
);
SELECT throws_ok(
    $$SELECT chatd_test.model_config(p_is_default => TRUE)$$, '23505', NULL, 'a second default model is refused'
);
SELECT throws_ok(
    $$INSERT INTO chatd.providers (name, kind, api_key_env) VALUES ('p', 'openai', 'sk-abc-123')$$,
    '23514', NULL, 'a secret in api_key_env is refused: it holds a variable name'
);
SELECT throws_ok(
    $$INSERT INTO chatd.providers (name, kind) VALUES ('compat', 'openai-compat')$$,
    '23514', NULL, 'an openai-compat provider needs a base URL'
);

-- A chat's workspace must belong to the chat's organization.
CREATE TEMP TABLE t AS
SELECT
    chatd_test.org() AS org_a,
    chatd_test.org() AS org_b;
SELECT throws_ok(
    format(
        $$SELECT chatd_test.chat(chatd_test.user(%L), %L, p_workspace => %L)$$,
        (SELECT org_a FROM t), (SELECT org_a FROM t), chatd_test.workspace((SELECT org_b FROM t))
    ),
    '23503', NULL, 'a workspace of another organization cannot be bound'
);
SELECT lives_ok(
    format(
        $$SELECT chatd_test.chat(chatd_test.user(%L), %L, p_workspace => %L)$$,
        (SELECT org_a FROM t), (SELECT org_a FROM t), chatd_test.workspace((SELECT org_a FROM t))
    ),
    'a workspace of the same organization can be bound'
);
SELECT throws_ok(
    format(
        $$INSERT INTO chatd.group_members (organization_id, group_id, user_id) VALUES (%L, %L, %L)$$,
        (SELECT org_a FROM t), chatd_test.grp((SELECT org_a FROM t)), chatd_test.user((SELECT org_b FROM t))
    ),
    '23503', NULL, 'a user outside the organization cannot join its group'
);
SELECT throws_ok(
    format(
        $$INSERT INTO chatd.messages (chat_id, role, content) VALUES (%L, 'user', '[{"type": "html"}]')$$,
        chatd_test.chat(chatd_test.user((SELECT org_a FROM t)), (SELECT org_a FROM t))
    ),
    '23514', NULL, 'a message part of an unknown type is refused'
);

SELECT * FROM finish();
ROLLBACK;
