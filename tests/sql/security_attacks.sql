-- Attacks through the interface chatd_app and chatd_worker do have
-- (docs/security.md): a hostile search_path, cross-tenant calls the state
-- tests do not cover (tests/sql/state_app.sql covers a peer of the same
-- organization and create_chat/list_chats outside one), injection in every
-- text argument, NUL bytes, malformed and oversized content. Each refused
-- call must leave the chat exactly as it was.
BEGIN;
SELECT plan(35);

-- the role grants on pgTAP's temp tables and pg_temp.outcome(sql)
\ir _security_session.psql

-- A chat's observable state: its row, messages and queue (test-only
-- SECURITY DEFINER, so the roles under test can take it).
CREATE FUNCTION pg_temp.fingerprint(p_chat uuid) RETURNS text
LANGUAGE sql SECURITY DEFINER AS $$
    SELECT md5(
        (SELECT c::text FROM chatd.chats AS c WHERE c.id = p_chat)
        || coalesce((SELECT string_agg(m::text, '|' ORDER BY m.id) FROM chatd.messages AS m WHERE m.chat_id = p_chat), '')
        || coalesce((
            SELECT string_agg(q::text, '|' ORDER BY q.id) FROM chatd.queued_messages AS q WHERE q.chat_id = p_chat
        ), '')
    )
$$;

CREATE TEMP TABLE t AS
SELECT
    o.org,
    o.other_org,
    chatd_test.user(o.org) AS usr,
    chatd_test.user(o.org) AS peer,
    chatd_test.user(o.other_org) AS stranger,
    chatd_test.model_config(p_is_default => TRUE) AS model
FROM (
    SELECT
        chatd_test.org() AS org,
        chatd_test.org() AS other_org
) AS o;
CREATE TEMP TABLE c AS
SELECT
    chatd_test.chat_in('waiting', (SELECT t.usr FROM t)) AS chat,
    chatd_test.chat_in('running', (SELECT t.stranger FROM t)) AS their_chat;
-- a queued message on the other user's (running) chat
CREATE TEMP TABLE queued AS
SELECT chatd.send_message(chatd_test.owner(c.their_chat), c.their_chat, '"queued"') AS queued FROM c;
CREATE TEMP TABLE q AS
SELECT
    (
        SELECT qm.id FROM chatd.queued_messages AS qm
        WHERE qm.chat_id = c.their_chat
    ) AS their_queued,
    (
        SELECT m.id FROM chatd.messages AS m
        WHERE m.chat_id = c.their_chat AND m.role = 'user'
        ORDER BY m.id LIMIT 1
    ) AS their_message
FROM c;
CREATE TEMP TABLE res (k text PRIMARY KEY, v text);
CREATE FUNCTION pg_temp.got(p_k text) RETURNS text
LANGUAGE sql AS $$
    SELECT r.v FROM res AS r
    WHERE r.k = p_k
$$;
GRANT SELECT ON t, c, q TO chatd_worker, chatd_app;
GRANT ALL ON res TO chatd_worker, chatd_app;
CREATE SCHEMA evil;
GRANT USAGE, CREATE ON SCHEMA evil TO chatd_app, chatd_worker;

-- a hostile search_path ----------------------------------------------------------
-- The caller controls schema evil and its own pg_temp, and puts both before
-- pg_catalog and chatd. SECURITY DEFINER functions pin their search_path,
-- so none of these shadows is ever used.
SET LOCAL ROLE chatd_app;
CREATE FUNCTION evil.length(text) RETURNS integer LANGUAGE sql AS 'SELECT 0';
CREATE FUNCTION evil.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql AS 'SELECT ''array''::text';
CREATE FUNCTION evil.jsonb_array_length(jsonb) RETURNS integer LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid LANGUAGE sql AS 'SELECT ''00000000-0000-0000-0000-000000000000''::uuid';
CREATE FUNCTION evil.never_distinct(uuid, uuid) RETURNS boolean LANGUAGE sql AS 'SELECT false';
DO $$
BEGIN
    EXECUTE 'CREATE OPERATOR evil.<> (leftarg = uuid, rightarg = uuid, function = evil.never_distinct)';
END
$$;
CREATE TABLE evil.chats (id uuid);
CREATE TABLE evil.organization_members (organization_id uuid, user_id uuid);
CREATE TEMP TABLE organization_members AS
SELECT
    t.org AS organization_id,
    t.stranger AS user_id
FROM t;
SET LOCAL search_path = pg_temp, evil, pg_catalog, chatd, public;
INSERT INTO pg_temp.res (k, v)
SELECT
    'title' AS k,
    pg_temp.outcome(format(
        'SELECT chatd.set_chat_title(%L, %L, %L)', (SELECT t.usr FROM pg_temp.t), (SELECT c.chat FROM pg_temp.c),
        repeat('x', 2000)
    )) AS v
UNION ALL
SELECT
    'content' AS k,
    pg_temp.outcome(format(
        $$SELECT chatd.create_chat(%L, %L, '{"not": "parts"}')$$, (SELECT t.usr FROM pg_temp.t),
        (SELECT t.org FROM pg_temp.t)
    )) AS v
UNION ALL
SELECT
    'stranger' AS k,
    pg_temp.outcome(format(
        'SELECT chatd.get_chat_snapshot(%L, %L)', (SELECT t.stranger FROM pg_temp.t), (SELECT c.chat FROM pg_temp.c)
    )) AS v
UNION ALL
SELECT
    'created' AS k,
    chatd.create_chat((SELECT t.usr FROM pg_temp.t), (SELECT t.org FROM pg_temp.t), '"hi"')::text AS v;
RESET search_path;
RESET ROLE;
SELECT is(
    pg_temp.got('title'), 'CD007',
    'hostile search_path: evil.length() does not bypass the title limit'
);
SELECT is(
    pg_temp.got('content'), 'CD007',
    'hostile search_path: evil.jsonb_typeof() does not bypass content validation'
);
SELECT is(
    pg_temp.got('stranger'), 'CD002',
    'hostile search_path: neither evil.<> nor a temp organization_members bypass the auth boundary'
);
SELECT ok(
    EXISTS (
        SELECT 1 FROM chatd.chats AS ch
        WHERE
            ch.id::text = pg_temp.got('created')
            AND ch.id <> '00000000-0000-0000-0000-000000000000'
    )
    AND NOT EXISTS (SELECT 1 FROM evil.chats),
    'hostile search_path: create_chat writes chatd.chats with pg_catalog.gen_random_uuid(), never evil.chats'
);

-- the worker, with evil.now() in the future, cannot make a live turn look stale
CREATE TEMP TABLE live AS
SELECT
    x.chat,
    chatd_test.claim(x.chat, 'w-live') AS lease
FROM (SELECT chatd_test.chat((SELECT t.usr FROM t)) AS chat) AS x;
GRANT SELECT ON live TO chatd_worker;
SET LOCAL ROLE chatd_worker;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT ''infinity''::timestamptz';
SET LOCAL search_path = evil, pg_catalog, chatd, public;
INSERT INTO pg_temp.res (k, v) SELECT
    'recovered' AS k,
    chatd.recover_stale_chats()::text AS v;
RESET search_path;
RESET ROLE;
SELECT is(
    pg_temp.got('recovered') || ' ' || chatd_test.status((SELECT l.chat FROM live AS l)),
    '0 running',
    'hostile search_path: evil.now() does not make recover_stale_chats steal a live turn'
);

-- tenancy -------------------------------------------------------------------------
SET LOCAL ROLE chatd_app;
CREATE TEMP TABLE fp AS
SELECT
    pg_temp.fingerprint(c.chat) AS mine,
    pg_temp.fingerprint(c.their_chat) AS theirs
FROM c;
SELECT is(
    array(
        SELECT x.call || ' by ' || u.kind
        FROM c
        CROSS JOIN (
            SELECT
                'stranger' AS kind,
                t.stranger::text AS who
            FROM t
            UNION ALL
            SELECT
                'null user' AS kind,
                NULL AS who
        ) AS u
        CROSS JOIN (
            VALUES
            ('send_message', $$SELECT chatd.send_message(%L, %L, '"x"')$$),
            ('send_message interrupt', $$SELECT chatd.send_message(%L, %L, '"x"', 'interrupt')$$),
            ('interrupt_chat', 'SELECT chatd.interrupt_chat(%L, %L)'),
            ('edit_message', $$SELECT chatd.edit_message(%L, %L, 1, '"x"')$$),
            ('archive_chat', 'SELECT chatd.archive_chat(%L, %L)'),
            ('unarchive_chat', 'SELECT chatd.unarchive_chat(%L, %L)'),
            ('set_chat_title', $$SELECT chatd.set_chat_title(%L, %L, 'x')$$),
            ('get_chat_snapshot', 'SELECT chatd.get_chat_snapshot(%L, %L)'),
            ('delete_queued_message', 'SELECT chatd.delete_queued_message(%L, %L, 1)'),
            ('promote_queued_message', 'SELECT chatd.promote_queued_message(%L, %L, 1)'),
            ('delete_chat', 'SELECT chatd.delete_chat(%L, %L)'),
            ('create_chat sub-agent', $$SELECT chatd.create_chat(%L, NULL, '"x"', p_parent_chat_id => %L)$$)
        ) AS x (call, tmpl)
        WHERE pg_temp.outcome(format(x.tmpl, u.who, c.chat)) <> 'CD002'
        ORDER BY x.call
    ),
    '{}'::text[],
    'a user of another organization, or no user, is refused (CD002) by every chat function'
);
RESET ROLE;
DELETE FROM chatd.organization_members AS om
WHERE om.user_id = (SELECT t.usr FROM t) AND om.organization_id = (SELECT t.org FROM t);
SET LOCAL ROLE chatd_app;
SELECT is(
    array(
        SELECT x.call
        FROM c
        CROSS JOIN (
            VALUES
            ('send_message', $$SELECT chatd.send_message(%L, %L, '"x"')$$),
            ('interrupt_chat', 'SELECT chatd.interrupt_chat(%L, %L)'),
            ('edit_message', $$SELECT chatd.edit_message(%L, %L, 1, '"x"')$$),
            ('archive_chat', 'SELECT chatd.archive_chat(%L, %L)'),
            ('set_chat_title', $$SELECT chatd.set_chat_title(%L, %L, 'x')$$),
            ('delete_chat', 'SELECT chatd.delete_chat(%L, %L)')
        ) AS x (call, tmpl)
        WHERE pg_temp.outcome(format(x.tmpl, (SELECT t.usr FROM t), c.chat)) <> 'CD002'
        ORDER BY x.call
    ),
    '{}'::text[],
    'an owner who left the organization may no longer send, interrupt, edit, archive, rename or delete the chat'
);
SELECT is(
    (SELECT count(*) FROM chatd.list_chats((SELECT t.usr FROM t), p_include_archived => TRUE)), 0::bigint,
    'list_chats hides the chats of an organization the user left'
);
RESET ROLE;
SELECT chatd_test.member((SELECT t.org FROM t), (SELECT t.usr FROM t));
SET LOCAL ROLE chatd_app;
SELECT throws_ok(
    format(
        'SELECT chatd.delete_queued_message(%L, %L, %s)',
        (SELECT t.usr FROM t), (SELECT c.chat FROM c), (SELECT q.their_queued FROM q)
    ),
    'CD007', NULL, 'delete_queued_message: a queued message of another user''s chat is not in my chat'
);
SELECT throws_ok(
    format(
        'SELECT chatd.promote_queued_message(%L, %L, %s)',
        (SELECT t.usr FROM t), (SELECT c.chat FROM c), (SELECT q.their_queued FROM q)
    ),
    'CD007', NULL, 'promote_queued_message: a queued message of another user''s chat cannot be promoted'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.edit_message(%L, %L, %s, '"hijack"')$$,
        (SELECT t.usr FROM t), (SELECT c.chat FROM c), (SELECT q.their_message FROM q)
    ),
    'CD007', NULL, 'edit_message: a message of another user''s chat cannot be edited'
);
SELECT is(
    (SELECT pg_temp.fingerprint(c.their_chat) FROM c), (SELECT fp.theirs FROM fp),
    'the other user''s chat, messages and queue are untouched by all of the above'
);
SELECT is(
    (SELECT pg_temp.fingerprint(c.chat) FROM c), (SELECT fp.mine FROM fp),
    'my chat is untouched by every refused call'
);

-- injection: text arguments are data ------------------------------------------------
RESET ROLE;
CREATE TEMP TABLE evil_text AS
SELECT
    x.n,
    x.s
FROM (
    VALUES
    (1, $$'); DROP TABLE chatd.chats; --$$),
    (2, '$$; DELETE FROM chatd.messages; $$'),
    (3, E'\\''; SELECT pg_sleep(10); --'),
    (4, '"}]; {"type": "text", "text": "forged"}'),
    (5, E'line\nbreak\ttab \\u0000 %s %I %L'),
    (6, 'chatd_wake'),
    (7, E'\u202Eunicode \U0001F600')
) AS x (n, s);
GRANT SELECT ON evil_text TO chatd_app, chatd_worker;
CREATE FUNCTION pg_temp.evil(p_n int) RETURNS text
LANGUAGE sql AS $$
    SELECT e.s FROM evil_text AS e
    WHERE e.n = p_n
$$;
SET LOCAL ROLE chatd_app;
CREATE TEMP TABLE made AS
SELECT
    e.n,
    chatd.create_chat(
        (SELECT t.usr FROM t), (SELECT t.org FROM t), to_jsonb(e.s), p_title => e.s, p_system_prompt => e.s
    ) AS chat
FROM evil_text AS e;
SELECT is(
    array(
        SELECT e.n
        FROM evil_text AS e
        INNER JOIN made AS m ON e.n = m.n
        CROSS JOIN LATERAL chatd.get_chat_snapshot((SELECT t.usr FROM t), m.chat) AS s (snap)
        WHERE
            s.snap #>> '{chat,title}' IS DISTINCT FROM e.s
            OR s.snap #>> '{messages,0,content,0,text}' IS DISTINCT FROM e.s
        ORDER BY e.n
    ),
    '{}'::int[],
    'create_chat: hostile titles and content are stored and read back verbatim'
);
SELECT is(
    array(
        SELECT e.n
        FROM evil_text AS e
        INNER JOIN made AS m ON e.n = m.n
        WHERE
            pg_temp.outcome(
                format('SELECT chatd.set_chat_title(%L, %L, %L)', (SELECT t.usr FROM t), m.chat, e.s || e.s)
            ) <> 'ok'
        ORDER BY e.n
    ),
    '{}'::int[],
    'set_chat_title accepts hostile titles as plain text'
);
RESET ROLE;
SELECT is(
    (
        SELECT count(*) FROM evil_text AS e
        INNER JOIN made AS m ON e.n = m.n
        INNER JOIN chatd.messages AS msg ON m.chat = msg.chat_id AND msg.role = 'system'
        WHERE msg.content -> 0 ->> 'text' = e.s
    ),
    7::bigint,
    'system prompts are stored verbatim'
);
SELECT ok(
    to_regclass('chatd.chats') IS NOT NULL AND (SELECT count(*) FROM chatd.messages) > 0,
    'chatd.chats and chatd.messages are still there'
);
-- the worker's text arguments: worker id, provider response id, error message
CREATE TEMP TABLE turn AS
SELECT
    x.chat,
    chatd_test.claim(x.chat, pg_temp.evil(1)) AS lease
FROM (SELECT chatd_test.chat((SELECT t.usr FROM t)) AS chat) AS x;
GRANT SELECT ON turn TO chatd_worker;
SET LOCAL ROLE chatd_worker;
SELECT is(
    (SELECT count(*) FROM chatd.heartbeat(pg_temp.evil(1), ARRAY[(SELECT turn.chat FROM turn)], ARRAY[(SELECT turn.lease FROM turn)])),
    0::bigint,
    'a hostile worker id is just a name: the heartbeat finds its chat'
);
SELECT lives_ok(
    format(
        'SELECT chatd.record_failure(%L, %s, %L)', (SELECT turn.chat FROM turn), (SELECT turn.lease FROM turn),
        jsonb_build_object(
            'message', pg_temp.evil(2), 'kind', 'generic', 'detail', pg_temp.evil(3),
            'retryable', FALSE
        )
    ),
    'record_failure takes a hostile error message and detail (the kind is one of the known kinds)'
);
RESET ROLE;
SELECT is(
    (
        SELECT ch.last_error ->> 'message' FROM chatd.chats AS ch
        WHERE ch.id = (SELECT turn.chat FROM turn)
    ),
    pg_temp.evil(2),
    'the error message is stored verbatim'
);
CREATE TEMP TABLE prov AS
SELECT chatd.admin_upsert_provider(e.s, 'openai') AS id
FROM evil_text AS e
WHERE e.n = 1;
CREATE TEMP TABLE mdl AS
SELECT chatd.admin_upsert_model(e1.s, e2.s) AS id
FROM evil_text AS e1
CROSS JOIN evil_text AS e2
WHERE e1.n = 1 AND e2.n = 2;
SELECT is(
    (
        SELECT p.name || '/' || m.model
        FROM chatd.model_configs AS m
        INNER JOIN chatd.providers AS p ON m.provider_id = p.id
        WHERE m.id = (SELECT mdl.id FROM mdl)
    ),
    pg_temp.evil(1) || '/' || pg_temp.evil(2),
    'admin functions store hostile provider and model names verbatim'
);

-- NUL bytes: PostgreSQL text and jsonb cannot hold them -----------------------------
SET LOCAL ROLE chatd_app;
SELECT throws_ok(
    format(
        $$SELECT chatd.set_chat_title(%L, %L, E'a\000b')$$, (SELECT t.usr FROM t), (SELECT c.chat FROM c)
    ),
    '22021', NULL, 'a NUL byte in a text argument is refused by PostgreSQL (22021 invalid byte sequence)'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.send_message(%L, %L, '"a\u0000b"')$$, (SELECT t.usr FROM t), (SELECT c.chat FROM c)
    ),
    '22P05', NULL, 'a \u0000 escape in JSON content is refused by PostgreSQL (22P05 untranslatable character)'
);

-- malformed content: CD007, nothing written -------------------------------------------
SELECT is(
    array(
        SELECT x.what
        FROM c
        CROSS JOIN (
            VALUES
            ('null', NULL),
            ('a number', '42'),
            ('an object', '{"type": "text", "text": "x"}'),
            ('an empty array', '[]'),
            ('an empty string', '""'),
            ('a part that is not an object', '["x"]'),
            ('a part without type', '[{"text": "x"}]'),
            ('an unknown part type', '[{"type": "exec", "text": "x"}]'),
            ('a text part with numeric text', '[{"type": "text", "text": 1}]'),
            ('a text part without text', '[{"type": "text"}]'),
            ('a reasoning part with object text', '[{"type": "reasoning", "text": {"a": 1}}]'),
            ('a good part then a bad one', '[{"type": "text", "text": "ok"}, {"type": "nope"}]')
        ) AS x (what, content)
        WHERE
            pg_temp.outcome(
                format('SELECT chatd.send_message(%L, %L, %L)', (SELECT t.usr FROM t), c.chat, x.content)
            ) <> 'CD007'
        ORDER BY x.what
    ),
    '{}'::text[],
    'send_message refuses malformed content with CD007'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.send_message(%L, %L, '[{"type": "text", "text": "ok"}, {"type": "nope"}]')$$,
        (SELECT t.usr FROM t), (SELECT c.chat FROM c)
    ),
    'CD007', 'invalid content: part {"type": "nope"} has no known type (text, reasoning, tool-call, tool-result, file)',
    'the error names the offending part'
);
SELECT is(
    array(
        SELECT x.what
        FROM c
        CROSS JOIN (
            VALUES
            ('create_chat', $$SELECT chatd.create_chat(%1$L, %3$L, '[{"type": "x"}]')$$),
            ('edit_message', $$SELECT chatd.edit_message(%1$L, %2$L, 1, '[{"type": "x"}]')$$)
        ) AS x (what, tmpl)
        WHERE pg_temp.outcome(format(x.tmpl, (SELECT t.usr FROM t), c.chat, (SELECT t.org FROM t))) <> 'CD007'
        ORDER BY x.what
    ),
    '{}'::text[],
    'create_chat and edit_message refuse malformed content with CD007'
);
SELECT is(
    (SELECT pg_temp.fingerprint(c.chat) FROM c), (SELECT fp.mine FROM fp),
    'after every refused call my chat row, messages and queue are exactly as before'
);
RESET ROLE;
CREATE TEMP TABLE run AS
SELECT
    x.chat,
    chatd_test.claim(x.chat, 'w-run') AS lease
FROM (SELECT chatd_test.chat((SELECT t.usr FROM t)) AS chat) AS x;
CREATE TEMP TABLE run_fp AS SELECT pg_temp.fingerprint(r.chat) AS before FROM run AS r;
GRANT SELECT ON run TO chatd_worker;
SET LOCAL ROLE chatd_worker;
SELECT throws_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '[{"type": "text", "text": 1}]')$$,
        (SELECT r.chat FROM run AS r), (SELECT r.lease FROM run AS r)
    ),
    'CD007', NULL, 'finish_turn refuses malformed content'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '"ok"', p_tool_messages => '[{"role": "tool", "content": {"x": 1}}]')$$,
        (SELECT r.chat FROM run AS r), (SELECT r.lease FROM run AS r)
    ),
    'CD007', NULL, 'finish_turn refuses a malformed tool message (after its status update ran)'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.publish_parts(%L, %s, 1, '{"type": "text"}')$$,
        (SELECT r.chat FROM run AS r), (SELECT r.lease FROM run AS r)
    ),
    'CD007', NULL, 'publish_parts refuses parts that are not an array'
);
RESET ROLE;
SELECT is(
    (SELECT pg_temp.fingerprint(r.chat) FROM run AS r), (SELECT rf.before FROM run_fp AS rf),
    'the running chat is unchanged: still running under the same lease, no half-written message'
);

-- oversized content -------------------------------------------------------------------
SET LOCAL ROLE chatd_app;
SELECT throws_ok(
    format(
        'SELECT chatd.send_message(%L, %L, to_jsonb(repeat(%L, 1100000)))', (SELECT t.usr FROM t),
        (SELECT c.chat FROM c), 'x'
    ),
    'CD007', NULL, 'send_message refuses a content over 1 MB'
);
SELECT throws_ok(
    format(
        'SELECT chatd.create_chat(%L, %L, %L, p_system_prompt => repeat(%L, 1100000))', (SELECT t.usr FROM t),
        (SELECT t.org FROM t), '"x"', 'x'
    ),
    'CD007', NULL, 'create_chat refuses a system prompt over 1 MB'
);
SET LOCAL ROLE chatd_worker;
SELECT throws_ok(
    format(
        'SELECT chatd.publish_parts(%L, %s, 2, jsonb_build_array(jsonb_build_object(%L, %L, %L, repeat(%L, 300000))))',
        (SELECT r.chat FROM run AS r), (SELECT r.lease FROM run AS r), 'type', 'text', 'text', 'x'
    ),
    'CD007', NULL, 'publish_parts refuses a part batch over 256 KB'
);
RESET ROLE;
SELECT lives_ok(
    format(
        'SELECT chatd.send_message(%L, %L, to_jsonb(repeat(%L, 500000)))', (SELECT t.usr FROM t),
        (SELECT c.chat FROM c), 'x'
    ),
    'a 500 KB message is accepted'
);

SELECT * FROM finish();
ROLLBACK;
