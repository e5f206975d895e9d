-- What chatd_worker, chatd_app and chatd_reporting can and cannot do, tried
-- for real under SET LOCAL ROLE (docs/security.md): no table access at all,
-- only their own functions, and those work end to end (SECURITY DEFINER,
-- running as chatd_owner, triggers and notifications included).
BEGIN;
SELECT plan(25);

-- the role grants on pgTAP's temp tables and pg_temp.outcome(sql)
\ir _security_session.psql

-- Every plain, non-trigger function in chatd, as a call with NULL arguments.
CREATE TEMP TABLE calls AS
SELECT
    p.proname::text AS name,
    format('SELECT chatd.%I(%s)', p.proname, (
        SELECT coalesce(string_agg('NULL::' || format_type(a.t, NULL), ', ' ORDER BY a.n), '')
        FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a (t, n)
    )) AS stmt
FROM pg_proc AS p
WHERE p.pronamespace = 'chatd'::regnamespace AND p.prorettype <> 'trigger'::regtype;

-- Every way to touch every chatd table, view and sequence directly.
CREATE TEMP TABLE touches AS
SELECT
    c.oid::regclass::text || ' ' || s.verb AS what,
    format(s.tmpl, c.oid::regclass, (
        SELECT a.attname FROM pg_attribute AS a
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND a.attidentity = '' AND a.attgenerated = ''
        ORDER BY a.attnum LIMIT 1
    )) AS stmt
FROM pg_class AS c
CROSS JOIN (
    VALUES
    ('select', 'SELECT * FROM %s LIMIT 1'),
    ('insert', 'INSERT INTO %s DEFAULT VALUES'),
    ('update', 'UPDATE %1$s SET %2$I = %2$I WHERE false'),
    ('delete', 'DELETE FROM %s'),
    ('truncate', 'TRUNCATE %s'),
    ('lock', 'LOCK TABLE %s IN ACCESS SHARE MODE')
) AS s (verb, tmpl)
WHERE
    c.relnamespace = 'chatd'::regnamespace
    -- views are not updatable: only reading them is a question of privileges
    AND (c.relkind IN ('r', 'p') OR c.relkind IN ('v', 'm') AND s.verb = 'select')
UNION ALL
SELECT
    c.oid::regclass::text || ' nextval' AS what,
    format('SELECT nextval(%L)', c.oid::regclass) AS stmt
FROM pg_class AS c
WHERE c.relnamespace = 'chatd'::regnamespace AND c.relkind = 'S';

CREATE TEMP TABLE worker_api (name) AS VALUES
('acquire_chats'), ('turn_history'), ('heartbeat'), ('publish_parts'), ('finish_turn'), ('finish_turns'), ('save_interrupted_turn'),
('record_failure'), ('release_chats'), ('recover_stale_chats'), ('janitor'), ('worker_settings'),
('commit_tool_step'), ('commit_tool_results'), ('turn_compaction'), ('commit_summary');
CREATE TEMP TABLE app_api (name) AS VALUES
('create_chat'), ('send_message'), ('interrupt_chat'), ('edit_message'), ('delete_queued_message'),
('promote_queued_message'), ('archive_chat'), ('unarchive_chat'), ('set_chat_title'), ('delete_chat'),
('get_chat_snapshot'), ('get_messages_before'), ('get_stream_parts'), ('list_chats'), ('usage_limit_status'), ('list_models'),
('submit_tool_results');

CREATE TEMP TABLE t AS
SELECT
    o.org,
    chatd_test.user(o.org) AS usr,
    chatd_test.model_config(p_is_default => TRUE) AS model
FROM (SELECT chatd_test.org() AS org) AS o;
-- some spend in the period, so the spend views call their functions
CREATE TEMP TABLE spent AS
SELECT chatd_test.message(chatd_test.chat(chatd_test.user(chatd_test.org())), 'assistant', p_cost_micros => 7) AS id;
GRANT SELECT ON t, calls, touches, worker_api, app_api TO chatd_worker, chatd_app, chatd_reporting;
CREATE TEMP TABLE ids (k text PRIMARY KEY, v text);
GRANT ALL ON ids TO chatd_worker, chatd_app;

-- chatd_worker ------------------------------------------------------------------
SET LOCAL ROLE chatd_worker;
SELECT is(
    array(
        SELECT t.what FROM touches AS t
        WHERE pg_temp.outcome(t.stmt) <> '42501'
        ORDER BY t.what
    ),
    '{}'::text[],
    'chatd_worker: every SELECT, INSERT, UPDATE, DELETE, TRUNCATE, LOCK and nextval on chatd relations is refused (42501)'
);
SELECT is(
    array(
        SELECT c.name FROM calls AS c
        WHERE c.name NOT IN (SELECT w.name FROM worker_api AS w) AND pg_temp.outcome(c.stmt) <> '42501'
        ORDER BY c.name
    ),
    '{}'::text[],
    'chatd_worker: every application, internal, spend and admin function is refused (42501)'
);
SELECT is(
    array(
        SELECT c.name FROM calls AS c
        WHERE c.name IN (SELECT w.name FROM worker_api AS w) AND pg_temp.outcome(c.stmt) = '42501'
        ORDER BY c.name
    ),
    '{}'::text[],
    'chatd_worker: every worker function may be called'
);
SELECT throws_ok('CREATE TABLE chatd.mine (id int)', '42501', NULL, 'chatd_worker cannot create in schema chatd');
SELECT throws_ok(
    'CREATE FUNCTION chatd.janitor(int) RETURNS int LANGUAGE sql AS ''SELECT 1''',
    '42501', NULL, 'chatd_worker cannot add an overload to schema chatd'
);

-- chatd_app ---------------------------------------------------------------------
SET LOCAL ROLE chatd_app;
SELECT is(
    array(
        SELECT t.what FROM touches AS t
        WHERE pg_temp.outcome(t.stmt) <> '42501'
        ORDER BY t.what
    ),
    '{}'::text[],
    'chatd_app: every direct access to chatd relations is refused (42501)'
);
SELECT is(
    array(
        SELECT c.name FROM calls AS c
        WHERE c.name NOT IN (SELECT a.name FROM app_api AS a) AND pg_temp.outcome(c.stmt) <> '42501'
        ORDER BY c.name
    ),
    '{}'::text[],
    'chatd_app: every worker, internal (chatd._*), spend and admin function is refused (42501)'
);
SELECT is(
    array(
        SELECT c.name FROM calls AS c
        WHERE c.name IN (SELECT a.name FROM app_api AS a) AND pg_temp.outcome(c.stmt) = '42501'
        ORDER BY c.name
    ),
    '{}'::text[],
    'chatd_app: every application function may be called'
);
SELECT throws_ok(
    $$SELECT chatd.admit_spend((SELECT t.usr FROM t), (SELECT t.org FROM t))$$,
    '42501', NULL, 'chatd_app cannot call the admission internals directly'
);
SELECT throws_ok(
    'ALTER FUNCTION chatd.create_chat(uuid, uuid, jsonb, uuid, text, text, uuid, uuid, chatd.client_type, jsonb, text[], boolean) '
    || 'SECURITY INVOKER',
    '42501', NULL, 'chatd_app cannot alter a function it may call'
);

-- chatd_reporting -----------------------------------------------------------------
SET LOCAL ROLE chatd_reporting;
SELECT is(
    array(
        SELECT t.what FROM touches AS t
        WHERE pg_temp.outcome(t.stmt) <> '42501'
            AND t.what NOT IN (
                SELECT c.oid::regclass::text || ' select' FROM pg_class AS c
                WHERE c.relnamespace = 'chatd'::regnamespace AND c.relkind = 'v'
            )
        ORDER BY t.what
    ),
    '{}'::text[],
    'chatd_reporting: only SELECT on the spend views; every other access is refused'
);
SELECT lives_ok(
    'SELECT * FROM chatd.spend_current_period, chatd.spend_by_organization, chatd.spend_by_model, '
    || 'chatd.models_without_prices',
    'chatd_reporting reads the spend views'
);
SELECT lives_ok('SELECT * FROM chatd.spend_by_user', 'chatd_reporting reads spend_by_user');
SELECT is(
    array(
        SELECT c.name FROM calls AS c
        WHERE
            c.name NOT IN ('spend_period_bounds', 'resolve_spend_limit', 'health')
            AND pg_temp.outcome(c.stmt) <> '42501'
        ORDER BY c.name
    ),
    '{}'::text[],
    'chatd_reporting: no chatd function may be called but the two the views need and health()'
);

-- a whole turn through the roles, as a deployment runs it -------------------------
SET LOCAL ROLE chatd_app;
INSERT INTO ids (k, v)
SELECT
    'chat' AS k,
    chatd.create_chat((SELECT t.usr FROM t), (SELECT t.org FROM t), '"hello"', p_title => 'first')::text AS v;
SELECT is(
    (chatd.get_chat_snapshot((
        SELECT t.usr FROM t), (
        SELECT i.v::uuid FROM ids AS i
        WHERE i.k = 'chat'
    )) #>> '{chat,status}'),
    'pending',
    'chatd_app: create_chat and get_chat_snapshot work'
);
SELECT is(
    (SELECT count(*) FROM chatd.list_chats((SELECT t.usr FROM t))), 1::bigint,
    'chatd_app: list_chats works'
);
SELECT is(
    (SELECT s.source FROM chatd.usage_limit_status((SELECT t.usr FROM t), (SELECT t.org FROM t)) AS s),
    'disabled', 'chatd_app: usage_limit_status works'
);

SET LOCAL ROLE chatd_worker;
SELECT isnt((SELECT s.heartbeat_interval_ms FROM chatd.worker_settings() AS s), NULL, 'chatd_worker: worker_settings');
INSERT INTO ids (k, v)
SELECT
    'lease' AS k,
    a.lease::text AS v
FROM chatd.acquire_chats('sec-worker', 10) AS a
WHERE a.chat_id = (
        SELECT i.v::uuid FROM ids AS i
        WHERE i.k = 'chat'
    );
SELECT isnt((
    SELECT i.v FROM ids AS i
    WHERE i.k = 'lease'
), NULL, 'chatd_worker: acquire_chats claims the chat');
SELECT is(
    array(
        SELECT h.chat_id
        FROM chatd.heartbeat(
                'sec-worker',
                ARRAY[(
                    SELECT i.v::uuid FROM ids AS i
                    WHERE i.k = 'chat'
                )],
                ARRAY[(
                    SELECT i.v::bigint FROM ids AS i
                    WHERE i.k = 'lease'
                )]
            ) AS h
    ),
    '{}'::uuid[],
    'chatd_worker: heartbeat keeps its chat'
);
SELECT lives_ok(
    format(
        $$SELECT chatd.publish_parts(%L, %s, 1, '[{"type": "text", "text": "hi"}]')$$,
        (
            SELECT i.v FROM ids AS i
            WHERE i.k = 'chat'), (
            SELECT i.v FROM ids AS i
            WHERE i.k = 'lease'
        )
    ),
    'chatd_worker: publish_parts'
);
SELECT lives_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '"hi there"', '{"input_tokens": 10, "output_tokens": 5}')$$,
        (
            SELECT i.v FROM ids AS i
            WHERE i.k = 'chat'), (
            SELECT i.v FROM ids AS i
            WHERE i.k = 'lease'
        )
    ),
    'chatd_worker: finish_turn'
);
SELECT lives_ok(
    'SELECT chatd.recover_stale_chats(), chatd.janitor(), chatd.release_chats(''sec-worker'')',
    'chatd_worker: recover_stale_chats, janitor, release_chats'
);

SET LOCAL ROLE chatd_app;
SELECT is(
    (
        SELECT jsonb_agg(m -> 'content' -> 0 ->> 'text' ORDER BY (m ->> 'id')::bigint)
        FROM jsonb_array_elements(chatd.get_chat_snapshot(
                (
                    SELECT t.usr FROM t), (
                    SELECT i.v::uuid FROM ids AS i
                    WHERE i.k = 'chat'
                )
            ) -> 'messages') AS m
    ),
    '["hello", "hi there"]'::jsonb,
    'chatd_app reads the assistant message the worker wrote'
);
RESET ROLE;
SELECT is(
    (
        SELECT m.total_cost_micros FROM chatd.messages AS m
        WHERE m.chat_id = (
                SELECT i.v::uuid FROM ids AS i
                WHERE i.k = 'chat'
            ) AND m.role = 'assistant'
    ),
    20::bigint,
    'the cost was computed by SQL running as chatd_owner (10 x 1 + 5 x 2 micro-dollars)'
);

SELECT * FROM finish();
ROLLBACK;
