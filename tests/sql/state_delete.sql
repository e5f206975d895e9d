-- chatd.delete_chat (sql/22_app_delete.sql): owner-checked soft deletion
-- of a chat and its sub-agent tree. Spend history survives; a deleted chat
-- is not found by every application function, fenced for its worker, never
-- claimed, and frozen. The notifications are observed in
-- tests/python/test_state_notify.py.
BEGIN;
-- the ledger trigger is deferred to commit; this file reads the ledger
-- inside its one transaction, so the trigger fires at once here
SET CONSTRAINTS chatd.messages_spend_ledger IMMEDIATE;
SELECT plan(56);

CREATE TEMP TABLE t AS
SELECT
    o.org,
    chatd_test.user(o.org) AS usr,
    chatd_test.user(o.org) AS peer,
    chatd_test.user(chatd_test.org()) AS outsider,
    chatd_test.model_config(p_is_default => TRUE) AS model
FROM (SELECT chatd_test.org() AS org) AS o;

-- A tree: root -> child -> grandchild, and a second root; costs recorded.
CREATE TEMP TABLE c (name text PRIMARY KEY, id uuid);
INSERT INTO c
SELECT
    'root' AS name,
    chatd.create_chat(t.usr, t.org, '"root task"', p_title => 'secret title', p_system_prompt => 'be brief') AS id
FROM t;
INSERT INTO c
SELECT
    'child' AS name,
    chatd.create_chat(t.usr, NULL, '"child task"', p_parent_chat_id => c.id) AS id
FROM t, c
WHERE c.name = 'root';
INSERT INTO c
SELECT
    'grandchild' AS name,
    chatd.create_chat(t.usr, NULL, '"grandchild task"', p_parent_chat_id => c.id) AS id
FROM t, c
WHERE c.name = 'child';
INSERT INTO c
SELECT
    'other' AS name,
    chatd.create_chat(t.usr, t.org, '"another chat"') AS id
FROM t;

CREATE FUNCTION pg_temp.chat(p_name text) RETURNS uuid
LANGUAGE sql AS $$ SELECT c.id FROM c WHERE c.name = p_name $$;
CREATE FUNCTION pg_temp.usr() RETURNS uuid
LANGUAGE sql AS $$ SELECT t.usr FROM t $$;

SELECT chatd_test.spend(pg_temp.chat('root'), 300);
SELECT chatd_test.spend(pg_temp.chat('child'), 200);
SELECT chatd_test.spend(pg_temp.chat('grandchild'), 100);
SELECT chatd_test.spend(pg_temp.chat('other'), 50);

-- the function ---------------------------------------------------------------
SELECT has_function('chatd', 'delete_chat', ARRAY['uuid', 'uuid'], 'delete_chat(uuid, uuid) exists');
SELECT function_returns('chatd', 'delete_chat', ARRAY['uuid', 'uuid'], 'integer');
SELECT is_definer('chatd', 'delete_chat', ARRAY['uuid', 'uuid'], 'delete_chat is SECURITY DEFINER');

-- the auth boundary ------------------------------------------------------------
SELECT throws_ok(
    format($$SELECT chatd.delete_chat(%L, %L)$$, (SELECT t.peer FROM t), pg_temp.chat('root')),
    'CD002', NULL, 'another member of the organization may not delete the chat'
);
SELECT throws_ok(
    format($$SELECT chatd.delete_chat(%L, %L)$$, (SELECT t.outsider FROM t), pg_temp.chat('root')),
    'CD002', NULL, 'a user of another organization may not delete the chat'
);
SELECT throws_ok(
    format($$SELECT chatd.delete_chat(NULL, %L)$$, pg_temp.chat('root')),
    'CD002', NULL, 'no acting user: forbidden'
);
DELETE FROM chatd.organization_members
WHERE user_id = pg_temp.usr();
SELECT throws_ok(
    format($$SELECT chatd.delete_chat(%L, %L)$$, pg_temp.usr(), pg_temp.chat('root')),
    'CD002', NULL, 'an owner who left the organization may not delete the chat'
);
SELECT chatd_test.member((SELECT t.org FROM t), pg_temp.usr());
SELECT throws_ok(
    format($$SELECT chatd.delete_chat(%L, gen_random_uuid())$$, pg_temp.usr()),
    'CD001', NULL, 'an unknown chat: not found'
);
SELECT is(
    (
        SELECT count(*) FROM chatd.chats
        WHERE deleted_at IS NOT NULL
    ), 0::bigint,
    'refused deletions deleted nothing'
);

-- deleting a sub-tree ------------------------------------------------------------
CREATE TEMP TABLE spend_before AS
SELECT * FROM chatd.usage_limit_status(pg_temp.usr(), (SELECT t.org FROM t));
CREATE TEMP TABLE spend_view_before AS
SELECT
    spent_micros,
    priced_messages
FROM chatd.spend_by_user
WHERE user_id = pg_temp.usr();

SELECT is(
    chatd.delete_chat(pg_temp.usr(), pg_temp.chat('child')), 2,
    'deleting a sub-agent chat deletes it and its descendants: 2 chats'
);
SELECT results_eq(
    $$SELECT c.name, ch.deleted_at IS NOT NULL FROM c JOIN chatd.chats AS ch ON ch.id = c.id ORDER BY c.name$$,
    $$VALUES ('child', TRUE), ('grandchild', TRUE), ('other', FALSE), ('root', FALSE)$$,
    'the parent and unrelated chats are not deleted'
);
SELECT is(
    chatd.delete_chat(pg_temp.usr(), pg_temp.chat('root')), 1,
    'deleting the root afterwards deletes the one chat left in its tree'
);
SELECT throws_ok(
    format($$SELECT chatd.delete_chat(%L, %L)$$, pg_temp.usr(), pg_temp.chat('root')),
    'CD001', NULL, 'a deleted chat cannot be deleted again: not found'
);

-- what deletion keeps and wipes ------------------------------------------------------
SELECT results_eq(
    $$SELECT * FROM chatd.usage_limit_status(pg_temp.usr(), (SELECT t.org FROM t))$$,
    $$SELECT * FROM spend_before$$,
    'usage_limit_status is the same before and after deleting chats that spent'
);
SELECT results_eq(
    $$SELECT spent_micros, priced_messages FROM chatd.spend_by_user WHERE user_id = pg_temp.usr()$$,
    $$SELECT * FROM spend_view_before$$,
    'spend_by_user is the same before and after'
);
SELECT is(
    (SELECT spent_micros FROM spend_before), 650::bigint,
    'the spend compared includes the deleted chats (300 + 200 + 100 + 50)'
);
SELECT is(
    (
        SELECT count(*) FROM chatd.messages AS m
        WHERE m.chat_id IN (
                SELECT c.id FROM c
                WHERE c.name <> 'other'
            )
            AND (m.content <> '[]'::jsonb OR NOT m.deleted)
    ),
    0::bigint,
    'every message of the deleted chats is wiped (empty content) and marked deleted'
);
SELECT results_eq(
    $$
        SELECT m.role::text, m.total_cost_micros, m.model_config_id IS NOT NULL FROM chatd.messages AS m
        WHERE m.chat_id = pg_temp.chat('root') ORDER BY m.id
    $$,
    $$VALUES ('system', NULL::bigint, FALSE), ('user', NULL, FALSE), ('assistant', 300::bigint, TRUE)$$,
    'message rows keep their role, cost and model config'
);
SELECT row_eq(
    format(
        $$SELECT title, archived, status, owner_id, organization_id FROM chatd.chats WHERE id = %L$$,
        pg_temp.chat('root')
    ),
    row(''::text, TRUE, 'waiting'::chatd.chat_status, pg_temp.usr(), (SELECT t.org FROM t)),
    'the chat row stays (owner, organization), archived and idle, its title wiped'
);
SELECT isnt(
    (
        SELECT m.content FROM chatd.messages AS m
        WHERE m.chat_id = pg_temp.chat('other')
        ORDER BY m.id LIMIT 1
    ),
    '[]'::jsonb,
    'the messages of other chats are untouched'
);

-- a deleted chat is not found ----------------------------------------------------------
SELECT
    throws_ok(
        format($$SELECT chatd.%s$$, f),
        'CD001', NULL, 'a deleted chat is not found by ' || split_part(f, '(', 1)
    )
FROM (
    SELECT unnest(ARRAY[
        format('get_chat_snapshot(%L, %L)', pg_temp.usr(), pg_temp.chat('root')),
        format('send_message(%L, %L, %L)', pg_temp.usr(), pg_temp.chat('root'), '"x"'),
        format('interrupt_chat(%L, %L)', pg_temp.usr(), pg_temp.chat('root')),
        format('edit_message(%L, %L, 1, %L)', pg_temp.usr(), pg_temp.chat('root'), '"x"'),
        format('delete_queued_message(%L, %L, 1)', pg_temp.usr(), pg_temp.chat('root')),
        format('promote_queued_message(%L, %L, 1)', pg_temp.usr(), pg_temp.chat('root')),
        format('archive_chat(%L, %L)', pg_temp.usr(), pg_temp.chat('root')),
        format('unarchive_chat(%L, %L)', pg_temp.usr(), pg_temp.chat('root')),
        format('set_chat_title(%L, %L, %L)', pg_temp.usr(), pg_temp.chat('root'), 'x'),
        format(
            'get_stream_parts(%L, ARRAY[%L]::uuid[], ARRAY[1]::bigint[], ARRAY[0])',
            pg_temp.usr(), pg_temp.chat('root')
        ),
        format(
            'create_chat(%L, NULL, %L, p_parent_chat_id => %L)', pg_temp.usr(), '"x"', pg_temp.chat('root')
        )
    ]) AS f
) AS calls;
SELECT throws_ok(
    format($$SELECT chatd.get_chat_snapshot(%L, %L)$$, (SELECT t.peer FROM t), pg_temp.chat('root')),
    'CD001', NULL, 'a deleted chat is not found for other users either'
);
SELECT results_eq(
    format($$SELECT id FROM chatd.list_chats(%L, p_include_archived => TRUE)$$, pg_temp.usr()),
    ARRAY[pg_temp.chat('other')],
    'list_chats leaves deleted chats out, archived ones included'
);

-- admission after deleting the chats that spent ------------------------------------------
SELECT chatd_test.spend_config(TRUE, 600);
SELECT throws_ok(
    format($$SELECT chatd.create_chat(%L, %L, '"again"')$$, pg_temp.usr(), (SELECT t.org FROM t)),
    'CD006', NULL, 'admission still refuses at the limit after the chats that spent it were deleted'
);
SELECT chatd.delete_chat(pg_temp.usr(), pg_temp.chat('other'));
SELECT throws_ok(
    format($$SELECT chatd.send_message(%L, %L, '"x"')$$, pg_temp.usr(), pg_temp.chat('other')),
    'CD001', NULL, 'send_message to a deleted chat: not found (before any admission)'
);
SELECT throws_ok(
    format($$SELECT chatd.create_chat(%L, %L, '"again"')$$, pg_temp.usr(), (SELECT t.org FROM t)),
    'CD006', NULL, 'deleting every chat of the user refunds nothing'
);
SELECT chatd_test.spend_config(FALSE);

-- a running chat is stopped and fenced -------------------------------------------------
CREATE TEMP TABLE run AS
SELECT chatd_test.chat_in('pending') AS chat;
CREATE TEMP TABLE lease AS
SELECT chatd_test.claim((SELECT run.chat FROM run), 'w-del') AS lease;
SELECT chatd.publish_parts((SELECT run.chat FROM run), (SELECT lease.lease FROM lease), 0, '[{"type": "text", "text": "par"}]');
SELECT chatd.send_message(chatd_test.owner((SELECT run.chat FROM run)), (SELECT run.chat FROM run), '"queued"');
SELECT is(
    chatd.delete_chat(chatd_test.owner((SELECT run.chat FROM run)), (SELECT run.chat FROM run)), 1,
    'a running chat can be deleted'
);
SELECT row_eq(
    format($$SELECT status, worker_id, lease FROM chatd.chats WHERE id = %L$$, (SELECT run.chat FROM run)),
    row('waiting'::chatd.chat_status, NULL::text, (SELECT lease.lease + 1 FROM lease)),
    'running -> waiting, no worker, lease bumped'
);
SELECT is(
    (
        SELECT count(*) FROM chatd.queued_messages
        WHERE chat_id = (SELECT run.chat FROM run)
    ), 0::bigint,
    'its queue is removed'
);
SELECT is(
    (
        SELECT count(*) FROM chatd.stream_parts
        WHERE chat_id = (SELECT run.chat FROM run)
    ), 0::bigint,
    'its stream parts are removed'
);
SELECT
    throws_ok(
        format($$SELECT * FROM chatd.%s$$, f),
        'CD004', NULL, 'the worker of a deleted running chat is fenced: ' || split_part(f, '(', 1)
    )
FROM (
    SELECT
        unnest(ARRAY[
            format('finish_turn(%L, %s, %L)', run.chat, lease.lease, '"late answer"'),
            format('publish_parts(%L, %s, 1, %L)', run.chat, lease.lease, '[{"type": "text", "text": "x"}]'),
            format(
                'record_failure(%L, %s, %L)', run.chat, lease.lease, '{"message": "m", "kind": "generic", "retryable": true}'
            ),
            format('save_interrupted_turn(%L, %s, %L)', run.chat, lease.lease, '"partial"'),
            format('turn_history(%L, %L, %s, 0)', 'w-del', run.chat, lease.lease)
        ]) AS f
    FROM run, lease
) AS calls;
SELECT is(
    (
        SELECT array_agg(h.chat_id) FROM chatd.heartbeat(
                'w-del', ARRAY[(SELECT run.chat FROM run)], ARRAY[(SELECT lease.lease FROM lease)]
            ) AS h
    ),
    ARRAY[(SELECT run.chat FROM run)],
    'its worker''s heartbeat reports the chat lost'
);
SELECT results_eq(
    format(
        $$SELECT f.message_id FROM chatd.finish_turns(%L) AS f$$,
        jsonb_build_array(jsonb_build_object(
            'chat_id', (SELECT run.chat FROM run), 'lease', (SELECT lease.lease FROM lease), 'content', 'late'
        ))
    ),
    ARRAY[NULL::bigint],
    'finish_turns reports the deleted chat''s lease lost and writes nothing'
);
SELECT is(
    (
        SELECT count(*) FROM chatd.messages
        WHERE chat_id = (SELECT run.chat FROM run) AND content <> '[]'::jsonb
    ),
    0::bigint,
    'nothing the worker sent afterwards was written'
);

-- pending and error chats; workers never claim a deleted chat -------------------------------
CREATE TEMP TABLE idle AS
SELECT
    chatd_test.chat_in('pending') AS pending_chat,
    chatd_test.chat_in('error') AS error_chat;
SELECT chatd.delete_chat(chatd_test.owner(idle.pending_chat), idle.pending_chat) FROM idle;
SELECT chatd.delete_chat(chatd_test.owner(idle.error_chat), idle.error_chat) FROM idle;
UPDATE chatd.chats SET next_attempt_at = '-infinity'
WHERE id = (SELECT idle.pending_chat FROM idle);
SELECT is(
    (
        SELECT count(*) FROM chatd.acquire_chats('w-claim', 1000) AS a
        WHERE a.chat_id = (SELECT idle.pending_chat FROM idle)
    ),
    0::bigint,
    'a deleted pending chat is never claimed'
);
SELECT is(chatd_test.status((SELECT idle.pending_chat FROM idle)), 'waiting', 'pending -> waiting on deletion');
SELECT row_eq(
    format($$SELECT status, last_error FROM chatd.chats WHERE id = %L$$, (SELECT idle.error_chat FROM idle)),
    row('error'::chatd.chat_status, '{"message": "chat deleted", "kind": "generic", "retryable": false}'::jsonb),
    'an error chat stays in error, its error text wiped (the kind kept)'
);

-- the guard keeps a deleted chat frozen -------------------------------------------------------
UPDATE chatd.chats SET archived = FALSE, deleted_at = NULL, title = 'revived'
WHERE id = (SELECT idle.pending_chat FROM idle);
SELECT row_eq(
    format($$SELECT archived, deleted_at IS NOT NULL, title FROM chatd.chats WHERE id = %L$$, (SELECT idle.pending_chat FROM idle)),
    row(TRUE, TRUE, ''::text),
    'an UPDATE of a deleted chat changes nothing, even by the owner role'
);

-- a deleted descendant stays deleted through its parent's archive and unarchive
CREATE TEMP TABLE tree AS
SELECT
    p.parent,
    chatd.create_chat(p.owner, NULL, '"kid"', p_parent_chat_id => p.parent) AS kid
FROM (
    SELECT
        x.chat AS parent,
        chatd_test.owner(x.chat) AS owner
    FROM (SELECT chatd_test.chat_in('waiting') AS chat) AS x
) AS p;
SELECT chatd.delete_chat(chatd_test.owner(tree.kid), tree.kid) FROM tree;
SELECT is(
    chatd.archive_chat(chatd_test.owner(tree.parent), tree.parent), 1,
    'archiving the parent archives only the live chats of the tree'
) FROM tree;
SELECT is(
    chatd.unarchive_chat(chatd_test.owner(tree.parent), tree.parent), 1,
    'unarchiving the parent unarchives only the live chats of the tree'
) FROM tree;
SELECT row_eq(
    format($$SELECT archived, deleted_at IS NOT NULL FROM chatd.chats WHERE id = %L$$, (SELECT tree.kid FROM tree)),
    row(TRUE, TRUE),
    'the deleted child stays archived and deleted'
);
SELECT is(
    (SELECT count(*)::integer FROM chatd.list_chats(chatd_test.owner((SELECT tree.parent FROM tree)), p_include_archived => TRUE)),
    1,
    'and stays out of the owner''s list'
);

SELECT * FROM finish();
ROLLBACK;
