-- Tools (issue 13): client tool definitions, the tool loop of a turn
-- (commit_tool_step, commit_tool_results), submit_tool_results, limits,
-- interrupt and edit during requires_action, MCP server administration.
BEGIN;
SELECT plan(49);

CREATE TEMP TABLE t AS
SELECT
    o.org,
    chatd_test.user(o.org) AS usr,
    chatd_test.user(o.org) AS other,
    chatd_test.model_config(p_input_price => 1, p_output_price => 2) AS model
FROM (SELECT chatd_test.org() AS org) AS o;

CREATE FUNCTION pg_temp.usr() RETURNS uuid LANGUAGE sql AS $$ SELECT t.usr FROM t $$;

-- A chat with the client tool 'ask' (and 'look'), claimed; returns chat and lease.
CREATE TABLE pg_temp.turns (name text PRIMARY KEY, chat uuid, lease bigint);
CREATE FUNCTION pg_temp.start(p_name text, p_mcp text[] DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_chat uuid := chatd.create_chat(
        pg_temp.usr(), (SELECT t.org FROM t), '"Q1"', (SELECT t.model FROM t),
        p_tools => '[{"name": "ask", "description": "asks the user", "input_schema": {"type": "object"}},
                     {"name": "look", "input_schema": {"type": "object"}}]',
        p_mcp_servers => p_mcp
    );
BEGIN
    INSERT INTO pg_temp.turns VALUES (p_name, v_chat, chatd_test.claim(v_chat));
END
$$;
CREATE FUNCTION pg_temp.chat(p_name text) RETURNS uuid
LANGUAGE sql AS $$ SELECT r.chat FROM pg_temp.turns AS r WHERE r.name = p_name $$;
CREATE FUNCTION pg_temp.lease(p_name text) RETURNS bigint
LANGUAGE sql AS $$ SELECT r.lease FROM pg_temp.turns AS r WHERE r.name = p_name $$;
-- A tool-call part.
CREATE FUNCTION pg_temp.call(p_id text, p_name text, p_source text DEFAULT 'client') RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'type', 'tool-call', 'tool_call_id', p_id, 'tool_name', p_name, 'input', '{"q": 1}'::jsonb, 'source', p_source
    )
$$;
CREATE FUNCTION pg_temp.step(p_name text, p_calls jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT chatd.commit_tool_step(
        pg_temp.chat(p_name), pg_temp.lease(p_name), p_calls,
        '{"input_tokens": 1000, "output_tokens": 1000}'
    )
$$;
CREATE FUNCTION pg_temp.submit(p_name text, p_ids text[]) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT chatd.submit_tool_results(
        pg_temp.usr(), pg_temp.chat(p_name),
        (SELECT jsonb_agg(jsonb_build_object('tool_call_id', i, 'output', 'answer ' || i)) FROM unnest(p_ids) AS i)
    )
$$;

-- definitions -------------------------------------------------------------------
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, %L, '"x"', %L, p_tools => '[{"input_schema": {}}]')$$,
        pg_temp.usr(), (SELECT t.org FROM t), (SELECT t.model FROM t)
    ),
    'CD007', NULL, 'a tool definition without a name is refused'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, %L, '"x"', %L, p_tools => '[{"name": "a", "input_schema": "object"}]')$$,
        pg_temp.usr(), (SELECT t.org FROM t), (SELECT t.model FROM t)
    ),
    'CD007', NULL, 'a tool definition whose input_schema is not an object is refused'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, %L, '"x"', %L,
        p_tools => '[{"name": "a", "input_schema": {}}, {"name": "a", "input_schema": {}}]')$$,
        pg_temp.usr(), (SELECT t.org FROM t), (SELECT t.model FROM t)
    ),
    'CD007', 'invalid tools: duplicate tool name a', 'duplicate tool names are refused at definition time'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, %L, '"x"', %L, p_tools => '[{"name": "mcp__x__y", "input_schema": {}}]')$$,
        pg_temp.usr(), (SELECT t.org FROM t), (SELECT t.model FROM t)
    ),
    'CD007', NULL, 'a client tool cannot take the mcp__ prefix of MCP tools'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, %L, '"x"', %L, p_mcp_servers => '{nope}')$$,
        pg_temp.usr(), (SELECT t.org FROM t), (SELECT t.model FROM t)
    ),
    'CD007', NULL, 'an unregistered MCP server is refused'
);
SELECT pg_temp.start('defs');
SELECT is(
    (
        SELECT c.tools -> 0 FROM chatd.chats AS c
        WHERE c.id = pg_temp.chat('defs')
    ),
    '{"name": "ask", "description": "asks the user", "input_schema": {"type": "object"}}'::jsonb,
    'create_chat stores the client tools normalized'
);
SELECT is(
    (
        SELECT a.tools -> 'client' -> 1 ->> 'description' FROM chatd.chats AS c
        CROSS JOIN LATERAL (SELECT chatd._turn_tools(c.id) AS tools) AS a
        WHERE c.id = pg_temp.chat('defs')
    ),
    '',
    'a tool without a description gets an empty one; the claim hands the tools to the worker'
);
SELECT ok(
    chatd._turn_tools(chatd_test.chat(pg_temp.usr())) IS NULL,
    'a chat without tools or MCP servers claims no tools (NULL)'
);

-- a step of client calls: running -> requires_action ---------------------------
SELECT pg_temp.start('client');
SELECT is(
    pg_temp.step('client', jsonb_build_array(
        '{"type": "text", "text": "let me ask"}'::jsonb, pg_temp.call('c1', 'ask'), pg_temp.call('c2', 'look')
    )) - 'message_id',
    '{"status": "requires_action", "pending": ["c1", "c2"]}'::jsonb,
    'a step of client calls goes running -> requires_action with the pending call ids'
);
SELECT row_eq(
    format($$SELECT m.finish_reason, m.total_cost_micros FROM chatd.messages AS m
        WHERE m.chat_id = %L AND m.role = 'assistant'$$, pg_temp.chat('client')),
    row('tool_calls'::text, 3000::bigint),
    'the tool step is committed before any tool runs, with its usage and cost'
);
SELECT throws_ok(
    format($$SELECT chatd.commit_tool_results(%L, %L, '[]')$$, pg_temp.chat('client'), pg_temp.lease('client')),
    'CD004', NULL, 'requires_action ends the worker''s lease'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.submit_tool_results(%L, %L, '[{"tool_call_id": "c1", "output": "x"}]')$$,
        (SELECT t.other FROM t), pg_temp.chat('client')
    ),
    'CD002', NULL, 'submit_tool_results: another user is refused'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.submit_tool_results(%L, %L, '[{"tool_call_id": "zz", "output": "x"}]')$$,
        pg_temp.usr(), pg_temp.chat('client')
    ),
    'CD009', NULL, 'submit_tool_results: an unknown call id is refused'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.submit_tool_results(%L, %L, '[{"tool_call_id": "c1", "output": "x", "is_error": "no"}]')$$,
        pg_temp.usr(), pg_temp.chat('client')
    ),
    'CD007', NULL, 'submit_tool_results: a malformed result is refused'
);
SELECT is(
    pg_temp.submit('client', '{c1}') ->> 'status', 'requires_action',
    'a partial answer keeps the chat in requires_action'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.submit_tool_results(%L, %L, '[{"tool_call_id": "c1", "output": "again"}]')$$,
        pg_temp.usr(), pg_temp.chat('client')
    ),
    'CD009', NULL, 'submit_tool_results: an answered call id is refused'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.submit_tool_results(%L, %L,
        '[{"tool_call_id": "c2", "output": "a"}, {"tool_call_id": "c2", "output": "b"}]')$$,
        pg_temp.usr(), pg_temp.chat('client')
    ),
    'CD009', NULL, 'submit_tool_results: the same call twice in one answer is refused, nothing written'
);
SELECT is(
    pg_temp.submit('client', '{c2}') - 'message_id' - 'version',
    '{"status": "pending", "pending": []}'::jsonb,
    'answering the last pending call makes the chat pending'
);
SELECT is(
    (
        SELECT m.content -> 0 FROM chatd.messages AS m
        WHERE m.chat_id = pg_temp.chat('client') AND m.role = 'tool'
        ORDER BY m.id DESC LIMIT 1
    ),
    '{"type": "tool-result", "tool_call_id": "c2", "tool_name": "look", "output": "answer c2", "is_error": false}'::jsonb,
    'an answer is a tool message of tool-result parts'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.submit_tool_results(%L, %L, '[{"tool_call_id": "c2", "output": "x"}]')$$,
        pg_temp.usr(), pg_temp.chat('client')
    ),
    'CD003', NULL, 'submit_tool_results on a chat that awaits nothing is CD003'
);
UPDATE pg_temp.turns SET lease = chatd_test.claim(chat)
WHERE name = 'client';
SELECT is(
    chatd.finish_turn(pg_temp.chat('client'), pg_temp.lease('client'), '"done"', p_finish_reason => 'stop') IS NOT NULL,
    TRUE, 'the turn continues on a new claim and finishes'
);

-- worker calls: running, results under the lease --------------------------------
SELECT pg_temp.start('mixed');
SELECT is(
    pg_temp.step('mixed', jsonb_build_array(
        pg_temp.call('m1', 'mcp__srv__echo', 'mcp'), pg_temp.call('m2', 'mcp__srv__echo', 'mcp'),
        pg_temp.call('c1', 'ask')
    )) - 'message_id',
    '{"status": "running", "pending": ["m1", "m2", "c1"]}'::jsonb,
    'a step with worker calls stays running'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.commit_tool_results(%L, %L, '[{"tool_call_id": "c1", "output": "x"}]')$$,
        pg_temp.chat('mixed'), pg_temp.lease('mixed')
    ),
    'CD009', NULL, 'the worker cannot answer a client call'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.submit_tool_results(%L, %L, '[{"tool_call_id": "m1", "output": "x"}]')$$,
        pg_temp.usr(), pg_temp.chat('mixed')
    ),
    'CD003', NULL, 'the application cannot answer while the worker runs the step'
);
SELECT is(
    chatd.commit_tool_results(
        pg_temp.chat('mixed'), pg_temp.lease('mixed'),
        '[{"tool_call_id": "m2", "output": {"v": 2}}]'
    ) - 'message_id',
    '{"status": "running", "pending": ["m1", "c1"]}'::jsonb,
    'each worker result is committed on its own, the chat stays running'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.commit_tool_results(%L, %L, '[{"tool_call_id": "m2", "output": "x"}]')$$,
        pg_temp.chat('mixed'), pg_temp.lease('mixed')
    ),
    'CD009', NULL, 'a worker result is never committed twice'
);
SELECT is(
    chatd.commit_tool_results(
        pg_temp.chat('mixed'), pg_temp.lease('mixed'),
        '[{"tool_call_id": "m1", "output": "boom", "is_error": true}]'
    ) - 'message_id',
    '{"status": "requires_action", "pending": ["c1"]}'::jsonb,
    'when only client calls remain, running -> requires_action'
);

SELECT pg_temp.start('mcp');
SELECT pg_temp.step('mcp', jsonb_build_array(pg_temp.call('m1', 'mcp__srv__echo', 'mcp')));
SELECT is(
    chatd.commit_tool_results(pg_temp.chat('mcp'), pg_temp.lease('mcp'), '[{"tool_call_id": "m1", "output": "1"}]')
    - 'message_id',
    '{"status": "running", "pending": []}'::jsonb,
    'every call answered: the next model step starts under the same lease'
);
SELECT is(
    pg_temp.step('mcp', jsonb_build_array(pg_temp.call('m2', 'mcp__srv__echo', 'mcp'))) ->> 'status', 'running',
    'a second step in the same turn'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.commit_tool_step(%L, %L, %L)$$, pg_temp.chat('mcp'), pg_temp.lease('mcp'),
        jsonb_build_array(pg_temp.call('m3', 'mcp__srv__echo', 'mcp'))
    ),
    'CD007', NULL, 'no new step while calls of the last one are unanswered'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.commit_tool_step(%L, %L, '[{"type": "text", "text": "no calls"}]')$$,
        pg_temp.chat('mcp'), pg_temp.lease('mcp') + 1
    ),
    'CD004', NULL, 'commit_tool_step is fenced by the lease'
);
SELECT throws_ok(
    format($$SELECT chatd.commit_tool_results(%L, %L, '[]')$$, pg_temp.chat('mcp'), pg_temp.lease('mcp') - 1),
    'CD004', NULL, 'commit_tool_results is fenced by the lease'
);

-- malformed steps -----------------------------------------------------------------
SELECT pg_temp.start('bad');
SELECT throws_ok(
    format(
        $$SELECT chatd.commit_tool_step(%L, %L, '[{"type": "text", "text": "no calls"}]')$$,
        pg_temp.chat('bad'), pg_temp.lease('bad')
    ),
    'CD007', NULL, 'a tool step without a tool call is refused'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.commit_tool_step(%L, %L, %L)$$, pg_temp.chat('bad'), pg_temp.lease('bad'),
        jsonb_build_array(pg_temp.call('x1', 'nope'))
    ),
    'CD007', NULL, 'a client call of a tool the chat does not define is refused'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.commit_tool_step(%L, %L, %L)$$, pg_temp.chat('bad'), pg_temp.lease('bad'),
        jsonb_build_array(pg_temp.call('x1', 'ask'), pg_temp.call('x1', 'look'))
    ),
    'CD007', NULL, 'duplicate call ids in a step are refused'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.commit_tool_step(%L, %L, %L)$$, pg_temp.chat('bad'), pg_temp.lease('bad'),
        jsonb_build_array(pg_temp.call('x1', 'ask') || '{"input": "text"}')
    ),
    'CD007', NULL, 'a call whose input is not an object is refused'
);

-- limits ------------------------------------------------------------------------
UPDATE chatd.settings SET max_tool_steps = 2, tool_result_max_bytes = 1024;
SELECT pg_temp.start('limit');
SELECT pg_temp.step('limit', jsonb_build_array(pg_temp.call('s1', 'mcp__srv__echo', 'mcp')));
SELECT chatd.commit_tool_results(
    pg_temp.chat('limit'), pg_temp.lease('limit'), jsonb_build_array(jsonb_build_object(
        'tool_call_id', 's1', 'output', repeat('x', 5000)
    ))
);
SELECT ok(
    (
        SELECT
            octet_length(m.content -> 0 ->> 'output') <= 1024
            AND m.content -> 0 ->> 'output' LIKE '% [truncated: 5000 bytes]'
        FROM chatd.messages AS m
        WHERE m.chat_id = pg_temp.chat('limit') AND m.role = 'tool'
    ),
    'an oversized result is truncated to settings.tool_result_max_bytes with a marker'
);
SELECT pg_temp.step('limit', jsonb_build_array(pg_temp.call('s2', 'mcp__srv__echo', 'mcp')));
SELECT chatd.commit_tool_results(pg_temp.chat('limit'), pg_temp.lease('limit'), '[{"tool_call_id": "s2", "output": 1}]');
SELECT is(
    pg_temp.step('limit', jsonb_build_array(pg_temp.call('s3', 'mcp__srv__echo', 'mcp'))) - 'message_id',
    '{"status": "error", "pending": []}'::jsonb,
    'the step after settings.max_tool_steps tool steps ends the turn in error'
);
SELECT row_eq(
    format($$SELECT c.last_error ->> 'kind', (c.last_error ->> 'retryable')::boolean FROM chatd.chats AS c
        WHERE c.id = %L$$, pg_temp.chat('limit')),
    row('step_limit'::text, FALSE),
    'step limit: ChatError kind step_limit, not retryable'
);
SELECT is(
    (
        SELECT m.content -> 0 ->> 'is_error' FROM chatd.messages AS m
        WHERE m.chat_id = pg_temp.chat('limit') AND m.role = 'tool'
        ORDER BY m.id DESC LIMIT 1
    ),
    'true', 'step limit: the refused calls get is_error results (the history stays well formed)'
);
UPDATE chatd.settings SET max_tool_steps = 25, tool_result_max_bytes = 262144;

-- interrupt, edit, send during requires_action ----------------------------------------
SELECT pg_temp.start('interrupt');
SELECT pg_temp.step('interrupt', jsonb_build_array(pg_temp.call('i1', 'ask')));
SELECT is(chatd.interrupt_chat(pg_temp.usr(), pg_temp.chat('interrupt')), 'waiting', 'interrupt: requires_action -> waiting');
SELECT is(
    (
        SELECT m.content -> 0 ->> 'output' FROM chatd.messages AS m
        WHERE m.chat_id = pg_temp.chat('interrupt') AND m.role = 'tool'
    ),
    'cancelled: the chat was interrupted',
    'interrupt answers the pending calls with is_error results'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.submit_tool_results(%L, %L, '[{"tool_call_id": "i1", "output": "late"}]')$$,
        pg_temp.usr(), pg_temp.chat('interrupt')
    ),
    'CD003', NULL, 'a late answer after the interrupt is refused'
);

SELECT pg_temp.start('edit');
SELECT pg_temp.step('edit', jsonb_build_array(pg_temp.call('e1', 'ask')));
SELECT chatd.edit_message(
    pg_temp.usr(), pg_temp.chat('edit'),
    (
        SELECT m.id FROM chatd.messages AS m
        WHERE m.chat_id = pg_temp.chat('edit') AND m.role = 'user'
    ), '"Q1 again"'
);
SELECT row_eq(
    format($$SELECT c.status, (SELECT count(*) FROM chatd._pending_tool_calls(c.id)) FROM chatd.chats AS c
        WHERE c.id = %L$$, pg_temp.chat('edit')),
    row('pending'::chatd.chat_status, 0::bigint),
    'edit: requires_action -> pending, the step is gone with the edited message'
);

SELECT pg_temp.start('send');
SELECT pg_temp.step('send', jsonb_build_array(pg_temp.call('x1', 'ask')));
SELECT is(
    chatd.send_message(pg_temp.usr(), pg_temp.chat('send'), '"meanwhile"', 'interrupt') ->> 'status', 'pending',
    'send_message with busy_behavior interrupt cancels the pending calls and sends'
);

-- MCP administration -------------------------------------------------------------
SELECT throws_ok(
    $$SELECT chatd.admin_upsert_mcp_server('Bad Name', p_url => 'http://x')$$,
    'CD007', NULL, 'an MCP server name outside [a-z0-9-] is refused'
);
SELECT throws_ok(
    $$SELECT chatd.admin_upsert_mcp_server('both', p_url => 'http://x', p_command => 'x')$$,
    'CD007', NULL, 'an MCP server has a url or a command, not both'
);
SELECT throws_ok(
    $$SELECT chatd.admin_upsert_mcp_server('s', p_url => 'http://x', p_secret_env => 'sk-live-123')$$,
    'CD007', NULL, 'a secret in secret_env is refused: it holds a variable name'
);
SELECT chatd.admin_upsert_mcp_server('srv', p_command => 'python examples/mcp_server.py', p_secret_env => 'SRV_TOKEN');
SELECT pg_temp.start('withmcp', '{srv}');
SELECT is(
    (SELECT chatd._turn_tools(pg_temp.chat('withmcp')) -> 'mcp_servers'),
    '[{"name": "srv", "url": null, "command": "python examples/mcp_server.py", "secret_env": "SRV_TOKEN"}]'::jsonb,
    'the claim hands the chat''s MCP servers to the worker'
);

SELECT * FROM finish();
ROLLBACK;
