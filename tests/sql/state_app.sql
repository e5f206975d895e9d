-- Application functions: create_chat (sub-agents, workspaces, defaults),
-- send_message (immediate, queued FIFO, limit, interrupt), interrupt_chat,
-- edit_message from every status, queue deletion and promotion, archive
-- cascade, auth boundary, snapshot and list.
BEGIN;
SELECT plan(68);

CREATE TEMP TABLE t AS
SELECT
    o.org,
    chatd_test.user(o.org) AS usr,
    chatd_test.user(o.org) AS peer,
    chatd_test.user() AS outsider,
    chatd_test.org() AS other_org,
    chatd_test.model_config(p_is_default => TRUE) AS model
FROM (SELECT chatd_test.org() AS org) AS o;
UPDATE t SET outsider = outsider;
CREATE TEMP TABLE c AS
SELECT chatd.create_chat(t.usr, t.org, '"hello"', p_system_prompt => 'be brief', p_title => 'T') AS chat
FROM t;

-- create_chat --------------------------------------------------------------
SELECT is(chatd_test.status((SELECT c.chat FROM c)), 'pending', 'create_chat: (new) -> pending');
SELECT results_eq(
    format(
        $$SELECT role::text || '/' || visibility::text FROM chatd.messages WHERE chat_id = %L ORDER BY id$$,
        (SELECT c.chat FROM c)
    ),
    ARRAY['system/model', 'user/both'],
    'system prompt (model only) and first user message'
);
SELECT is(
    (
        SELECT version FROM chatd.chats
        WHERE id = (SELECT c.chat FROM c)
    ), 1::bigint,
    'the chat is inserted once, in its final state'
);
SELECT is(
    (
        SELECT model_config_id FROM chatd.chats
        WHERE id = (SELECT c.chat FROM c)
    ), (SELECT model FROM t
    ),
    'no model given: the default model'
);
SELECT throws_ok(
    format($$SELECT chatd.create_chat(%L, %L, '"x"')$$, (SELECT t.outsider FROM t), (SELECT t.org FROM t)),
    'CD002', NULL, 'a non-member cannot create a chat in the organization'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, %L, '"x"', p_workspace_id => %L)$$,
        (SELECT t.usr FROM t), (SELECT t.org FROM t), chatd_test.workspace((SELECT t.other_org FROM t))
    ),
    'CD007', NULL, 'a workspace of another organization cannot be bound'
);
SELECT lives_ok(
    format(
        $$SELECT chatd.create_chat(%L, %L, '"x"', p_workspace_id => %L)$$,
        (SELECT t.usr FROM t), (SELECT t.org FROM t), chatd_test.workspace((SELECT t.org FROM t))
    ),
    'a workspace of the same organization can be bound'
);
SELECT throws_ok(
    format($$SELECT chatd.create_chat(%L, %L, '[{"type": "nope"}]')$$, (SELECT t.usr FROM t), (SELECT t.org FROM t)),
    'CD007', NULL, 'content parts must have a known type'
);
SELECT throws_ok(
    format($$SELECT chatd.create_chat(%L, %L, '"x"', gen_random_uuid())$$, (SELECT t.usr FROM t), (SELECT t.org FROM t)),
    'CD007', NULL, 'an unknown model is refused'
);

-- sub-agents
UPDATE chatd.chats SET client_type = 'ui'
WHERE id = (SELECT c.chat FROM c);
CREATE TEMP TABLE sub AS
SELECT chatd.create_chat(t.usr, NULL, '"child task"', p_parent_chat_id => c.chat) AS child FROM t, c;
CREATE TEMP TABLE sub2 AS
SELECT chatd.create_chat(t.usr, NULL, '"grandchild"', p_parent_chat_id => sub.child) AS grandchild FROM t, sub;
SELECT row_eq(
    format(
        $$SELECT organization_id, parent_chat_id, root_chat_id, client_type FROM chatd.chats WHERE id = %L$$,
        (SELECT sub2.grandchild FROM sub2)
    ),
    row((SELECT t.org FROM t), (SELECT sub.child FROM sub), (SELECT c.chat FROM c), 'ui'::chatd.client_type),
    'a sub-agent inherits organization, client type and root; parent is set'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, NULL, '"x"', p_parent_chat_id => %L, p_client_type => 'api')$$,
        (SELECT t.usr FROM t), (SELECT c.chat FROM c)
    ),
    'CD007', NULL, 'a sub-agent cannot choose another client type'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, %L, '"x"', p_parent_chat_id => %L)$$,
        (SELECT t.usr FROM t), (SELECT t.other_org FROM t), (SELECT c.chat FROM c)
    ),
    'CD007', NULL, 'a sub-agent cannot live in another organization'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, NULL, '"x"', p_parent_chat_id => %L)$$,
        (SELECT t.peer FROM t), (SELECT c.chat FROM c)
    ),
    'CD002', NULL, 'only a user who may act on the parent creates sub-agents'
);

-- auth boundary -------------------------------------------------------------
SELECT
    throws_ok(
        format($$SELECT chatd.%s$$, f),
        'CD002', NULL, 'another member of the organization may not call ' || split_part(f, '(', 1)
    )
FROM (
    SELECT unnest(ARRAY[
        format('send_message(%L, %L, %L)', (SELECT t.peer FROM t), (SELECT c.chat FROM c), '"x"'),
        format('interrupt_chat(%L, %L)', (SELECT t.peer FROM t), (SELECT c.chat FROM c)),
        format('edit_message(%L, %L, 1, %L)', (SELECT t.peer FROM t), (SELECT c.chat FROM c), '"x"'),
        format('delete_queued_message(%L, %L, 1)', (SELECT t.peer FROM t), (SELECT c.chat FROM c)),
        format('promote_queued_message(%L, %L, 1)', (SELECT t.peer FROM t), (SELECT c.chat FROM c)),
        format('archive_chat(%L, %L)', (SELECT t.peer FROM t), (SELECT c.chat FROM c)),
        format('unarchive_chat(%L, %L)', (SELECT t.peer FROM t), (SELECT c.chat FROM c)),
        format('get_chat_snapshot(%L, %L)', (SELECT t.peer FROM t), (SELECT c.chat FROM c)),
        format('set_chat_title(%L, %L, %L)', (SELECT t.peer FROM t), (SELECT c.chat FROM c), 'x')
    ]) AS f
) AS calls;
DELETE FROM chatd.organization_members
WHERE user_id = (SELECT t.usr FROM t) AND organization_id = (SELECT t.org FROM t);
SELECT throws_ok(
    format($$SELECT chatd.get_chat_snapshot(%L, %L)$$, (SELECT t.usr FROM t), (SELECT c.chat FROM c)),
    'CD002', NULL, 'an owner who left the organization may not act on the chat'
);
SELECT chatd_test.member((SELECT t.org FROM t), (SELECT t.usr FROM t));
SELECT throws_ok(
    format($$SELECT chatd.get_chat_snapshot(%L, gen_random_uuid())$$, (SELECT t.usr FROM t)),
    'CD001', NULL, 'an unknown chat: not found'
);

-- send_message and the queue ------------------------------------------------
CREATE TEMP TABLE w AS SELECT chatd_test.chat_in('waiting') AS chat;
CREATE TEMP TABLE wo AS SELECT chatd_test.owner((SELECT w.chat FROM w)) AS usr;
SELECT is(
    chatd.send_message((SELECT wo.usr FROM wo), (SELECT w.chat FROM w), '"again"') ->> 'queued', 'false',
    'send_message on a waiting chat sends at once'
);
SELECT is(chatd_test.status((SELECT w.chat FROM w)), 'pending', 'send_message: waiting -> pending');
SELECT is(
    chatd.send_message((SELECT wo.usr FROM wo), (SELECT w.chat FROM w), '"one"') ->> 'queued', 'true',
    'send_message on a pending chat queues'
);
SELECT chatd_test.claim((SELECT w.chat FROM w));
SELECT is(
    chatd.send_message((SELECT wo.usr FROM wo), (SELECT w.chat FROM w), '"two"') ->> 'queued', 'true',
    'send_message on a running chat queues'
);
SELECT is(chatd_test.status((SELECT w.chat FROM w)), 'running', 'queued: running stays running');
UPDATE chatd.settings SET queue_limit = 3;
SELECT chatd.send_message((SELECT wo.usr FROM wo), (SELECT w.chat FROM w), '"three"');
SELECT throws_ok(
    format($$SELECT chatd.send_message(%L, %L, '"four"')$$, (SELECT wo.usr FROM wo), (SELECT w.chat FROM w)),
    'CD005', NULL, 'the queue limit (settings.queue_limit) is enforced'
);
SELECT results_eq(
    format(
        $$SELECT content -> 0 ->> 'text' FROM chatd.queued_messages WHERE chat_id = %L ORDER BY position$$,
        (SELECT w.chat FROM w)
    ),
    ARRAY['one', 'two', 'three'],
    'the queue is FIFO'
);
SELECT lives_ok(
    format(
        $$SELECT chatd.delete_queued_message(%L, %L, %s)$$, (SELECT wo.usr FROM wo), (SELECT w.chat FROM w),
        (
            SELECT min(id) FROM chatd.queued_messages
            WHERE chat_id = (SELECT w.chat FROM w)
        )
    ),
    'delete_queued_message'
);
SELECT throws_ok(
    format($$SELECT chatd.delete_queued_message(%L, %L, -1)$$, (SELECT wo.usr FROM wo), (SELECT w.chat FROM w)),
    'CD007', NULL, 'deleting a message not in the queue'
);
SELECT ok(
    chatd.promote_queued_message(
        (SELECT wo.usr FROM wo), (SELECT w.chat FROM w),
        (
            SELECT max(id) FROM chatd.queued_messages
            WHERE chat_id = (SELECT w.chat FROM w)
        )
    ) > 0,
    'promote_queued_message sends a queued message now'
);
SELECT is(chatd_test.status((SELECT w.chat FROM w)), 'pending', 'promote: running -> pending (turn interrupted)');
SELECT results_eq(
    format($$SELECT content -> 0 ->> 'text' FROM chatd.queued_messages WHERE chat_id = %L$$, (SELECT w.chat FROM w)),
    ARRAY['two'],
    'the rest of the queue stays'
);
SELECT is(
    chatd.send_message((SELECT wo.usr FROM wo), (SELECT w.chat FROM w), '"now"', 'interrupt') ->> 'interrupted', 'true',
    'busy_behavior interrupt interrupts the busy chat'
);
SELECT results_eq(
    format(
        $$SELECT content -> 0 ->> 'text' FROM chatd.messages WHERE chat_id = %L ORDER BY id DESC LIMIT 1$$,
        (SELECT w.chat FROM w)
    ),
    ARRAY['two'],
    'behind a non-empty queue the interrupting message queues and the head goes out'
);
SELECT throws_ok(
    format($$SELECT chatd.send_message(%L, %L, '"x"', 'shout')$$, (SELECT wo.usr FROM wo), (SELECT w.chat FROM w)),
    'CD007', NULL, 'busy_behavior must be queue or interrupt'
);

CREATE TEMP TABLE e AS SELECT chatd_test.chat_in('error') AS chat;
SELECT chatd.send_message(chatd_test.owner((SELECT e.chat FROM e)), (SELECT e.chat FROM e), '"retry"');
SELECT row_eq(
    format($$SELECT status, last_error FROM chatd.chats WHERE id = %L$$, (SELECT e.chat FROM e)),
    row('pending'::chatd.chat_status, NULL::jsonb),
    'send_message: error -> pending, last_error cleared'
);
CREATE TEMP TABLE ra AS SELECT chatd_test.chat_in('requires_action') AS chat;
SELECT is(
    chatd.send_message(chatd_test.owner((SELECT ra.chat FROM ra)), (SELECT ra.chat FROM ra), '"x"') ->> 'queued',
    'true',
    'send_message queues while requires_action waits for tool results (issue 13)'
);

-- interrupt_chat ---------------------------------------------------------------
CREATE TEMP TABLE i AS SELECT
    chatd_test.chat_in('pending') AS p,
    chatd_test.chat_in('running') AS r;
SELECT is(
    chatd.interrupt_chat(chatd_test.owner((SELECT i.p FROM i)), (SELECT i.p FROM i)), 'waiting',
    'interrupt: pending -> waiting'
);
SELECT is(
    chatd.interrupt_chat(chatd_test.owner((SELECT i.r FROM i)), (SELECT i.r FROM i)), 'waiting',
    'interrupt: running -> waiting'
);
SELECT is(
    chatd.interrupt_chat(chatd_test.owner((SELECT i.r FROM i)), (SELECT i.r FROM i)), 'waiting',
    'interrupt of a waiting chat changes nothing'
);

-- edit_message from every status ---------------------------------------------
CREATE TEMP TABLE ed AS
SELECT
    s AS status,
    chatd_test.chat_in(s) AS chat
FROM unnest(enum_range(NULL::chatd.chat_status)) AS s;
SELECT
    is(
        chatd_test.status(chat)::text,
        'pending',
        format('edit_message: %s -> pending', status)
    )
FROM (
    SELECT
        status,
        chat,
        chatd.edit_message(
            chatd_test.owner(chat), chat,
            (
                SELECT min(m.id) FROM chatd.messages AS m
                WHERE m.chat_id = ed.chat AND m.role = 'user'
            ), '"edited"'
        ) AS new_id
    FROM ed
    ORDER BY status
) AS edited;
SELECT results_eq(
    format(
        $$SELECT role::text || ':' || deleted::text FROM chatd.messages WHERE chat_id = %L ORDER BY id$$,
        (
            SELECT chat FROM ed
            WHERE status = 'waiting'
        )
    ),
    ARRAY['user:true', 'assistant:true', 'user:false'],
    'the edited message and everything after it are soft-deleted'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.edit_message(%L, %L, 1, '"x"')$$,
        chatd_test.owner((
            SELECT chat FROM ed
            WHERE status = 'waiting'
        )), (
            SELECT chat
            FROM ed
            WHERE status = 'waiting'
        )
    ),
    'CD007', NULL, 'edit of a message of another chat'
);

-- archive cascade -------------------------------------------------------------
SELECT chatd_test.claim((SELECT sub.child FROM sub));
SELECT is(chatd.archive_chat((SELECT t.usr FROM t), (SELECT c.chat FROM c)), 3, 'archive cascades to the tree (3 chats)');
SELECT is(chatd_test.status((SELECT sub.child FROM sub)), 'waiting', 'a running member goes to waiting');
SELECT is(chatd_test.status((SELECT c.chat FROM c)), 'waiting', 'a pending member goes to waiting');
SELECT throws_ok(
    format($$SELECT chatd.send_message(%L, %L, '"x"')$$, (SELECT t.usr FROM t), (SELECT c.chat FROM c)),
    'CD008', NULL, 'send_message to an archived chat'
);
SELECT throws_ok(
    format($$SELECT chatd.edit_message(%L, %L, 1, '"x"')$$, (SELECT t.usr FROM t), (SELECT c.chat FROM c)),
    'CD008', NULL, 'edit_message of an archived chat'
);
SELECT throws_ok(
    format($$SELECT chatd.unarchive_chat(%L, %L)$$, (SELECT t.usr FROM t), (SELECT sub.child FROM sub)),
    'CD008', NULL, 'a child cannot be unarchived under an archived parent'
);
SELECT is(chatd.unarchive_chat((SELECT t.usr FROM t), (SELECT c.chat FROM c)), 3, 'unarchive cascades to the tree');
SELECT is(chatd.archive_chat((SELECT t.usr FROM t), (SELECT sub.child FROM sub)), 2, 'archiving a child archives its subtree only');
SELECT is(
    (
        SELECT archived FROM chatd.chats
        WHERE id = (SELECT c.chat FROM c)
    ), FALSE, 'the parent stays unarchived'
);
SELECT is((
    SELECT count(*) FROM chatd.acquire_chats('w9', 100) AS a
    WHERE a.chat_id IN (
            SELECT sub.child FROM sub
            UNION ALL
            SELECT sub2.grandchild FROM sub2
        )
), 0::bigint, 'archived chats are never claimed');

-- snapshot and list -----------------------------------------------------------
SELECT is(
    jsonb_array_length(chatd.get_chat_snapshot((SELECT t.usr FROM t), (SELECT c.chat FROM c)) -> 'messages'), 1,
    'the snapshot shows user-visible messages only (not the system prompt)'
);
SELECT is(
    jsonb_array_length(chatd.get_chat_snapshot((SELECT t.usr FROM t), (SELECT c.chat FROM c), 1000000000) -> 'messages'),
    0,
    'the snapshot returns messages after the given id'
);
SELECT ok(
    (chatd.get_chat_snapshot((SELECT t.usr FROM t), (SELECT c.chat FROM c)) -> 'chat' ->> 'version')::bigint
    = (
        SELECT version FROM chatd.chats
        WHERE id = (SELECT c.chat FROM c)
    ),
    'the snapshot carries the chat version'
);
SELECT is(
    (SELECT count(*) FROM chatd.list_chats((SELECT t.usr FROM t))), 2::bigint,
    'list_chats: non-archived chats of the user (root and workspace chat)'
);
SELECT is(
    (SELECT count(*) FROM chatd.list_chats((SELECT t.usr FROM t), p_include_archived => TRUE)), 4::bigint,
    'list_chats with archived chats'
);
SELECT throws_ok(
    format($$SELECT * FROM chatd.list_chats(%L, %L)$$, (SELECT t.usr FROM t), (SELECT t.other_org FROM t)),
    'CD002', NULL, 'list_chats of an organization the user is not in'
);

SELECT * FROM finish();
ROLLBACK;
