-- The status guard: every allowed (from, to) pair of DESIGN.md's table
-- passes the trigger, every other pair is refused with CD003 whoever writes
-- it; INSERT only as pending; lease fencing rules; the version trigger.
BEGIN;
SELECT plan(43);

CREATE TEMP TABLE pairs AS
SELECT
    f.s AS from_status,
    t.s AS to_status,
    chatd.transition_allowed(f.s, t.s) AS allowed
FROM unnest(enum_range(NULL::chatd.chat_status)) AS f (s)
CROSS JOIN unnest(enum_range(NULL::chatd.chat_status)) AS t (s)
WHERE f.s <> t.s;

SELECT is((
    SELECT count(*) FROM pairs
    WHERE allowed
), 17::bigint, 'seventeen status changes are allowed');
SELECT set_eq(
    'SELECT from_status::text || ''->'' || to_status::text FROM pairs WHERE allowed',
    ARRAY[
        'waiting->pending', 'error->pending', 'requires_action->pending', 'pending->running',
        'running->waiting', 'running->pending', 'running->error', 'pending->waiting', 'pending->error',
        'running->requires_action', 'requires_action->waiting', 'requires_action->error',
        'running->awaiting_agents', 'requires_action->awaiting_agents', 'awaiting_agents->pending',
        'awaiting_agents->error', 'awaiting_agents->waiting'
    ],
    'the allowed changes are exactly the rows of the transition table'
);

ALTER TABLE pairs ADD COLUMN chat uuid;
UPDATE pairs SET chat = chatd_test.chat_in(from_status);

-- every allowed change passes the trigger (raw UPDATE, constraints satisfied)
SELECT
    lives_ok(
        format(
            $$UPDATE chatd.chats SET status = %L, worker_id = CASE WHEN %L = 'running' THEN 'raw-worker' END,
            lease = lease + 1, started_at = now(), heartbeat_at = now(),
            last_error = coalesce(last_error, '{"message": "m", "kind": "generic"}')
          WHERE id = %L$$,
            to_status, to_status, chat
        ),
        format('allowed: %s -> %s', from_status, to_status)
    )
FROM pairs
WHERE allowed
ORDER BY from_status, to_status;

-- every other change is refused with CD003, naming chat, from and to
SELECT
    throws_ok(
        format(
            $$UPDATE chatd.chats SET status = %L, worker_id = CASE WHEN %L = 'running' THEN 'raw-worker' END,
            lease = lease + 1, started_at = now(), heartbeat_at = now(),
            last_error = coalesce(last_error, '{"message": "m", "kind": "generic"}')
          WHERE id = %L$$,
            to_status, to_status, chat
        ),
        'CD003',
        format('chat %s: invalid status transition from %s to %s', chat, from_status, to_status),
        format('refused: %s -> %s', from_status, to_status)
    )
FROM pairs
WHERE NOT allowed
ORDER BY from_status, to_status;

-- INSERT only as pending
SELECT throws_like(
    format(
        $$INSERT INTO chatd.chats (id, organization_id, owner_id, root_chat_id, model_config_id, status)
          SELECT i, c.organization_id, c.owner_id, i, c.model_config_id, 'waiting'
          FROM chatd.chats AS c, (SELECT gen_random_uuid() AS i) AS g WHERE c.id = %L$$,
        (SELECT min(pairs.chat::text) FROM pairs)
    ),
    '%cannot be created as waiting%',
    'a chat cannot be inserted in any status but pending'
);

-- lease rules
CREATE TEMP TABLE ids AS
SELECT
    chatd_test.chat_in('running') AS running_chat,
    chatd_test.chat_in('pending') AS pending_chat,
    chatd_test.chat_in('running') AS vchat,
    chatd_test.chat(chatd_test.user(chatd_test.org())) AS fresh_chat;
SELECT throws_ok(
    format('UPDATE chatd.chats SET lease = lease - 1 WHERE id = %L', (SELECT ids.running_chat FROM ids)),
    'CD003', NULL, 'the lease never goes back'
);
SELECT throws_ok(
    format('UPDATE chatd.chats SET lease = lease + 1 WHERE id = %L', (SELECT ids.running_chat FROM ids)),
    'CD003', NULL, 'the lease of a running turn cannot change'
);
SELECT throws_ok(
    format(
        $$UPDATE chatd.chats SET status = 'running', worker_id = 'w', started_at = now(), heartbeat_at = now()
          WHERE id = %L$$, (SELECT ids.pending_chat FROM ids)
    ),
    'CD003', NULL, 'a claim must bump the lease'
);

-- version trigger
CREATE TEMP TABLE v0 AS SELECT
    version,
    updated_at
FROM chatd.chats
WHERE id = (SELECT ids.vchat FROM ids);
UPDATE chatd.chats SET heartbeat_at = now() + interval '1 second'
WHERE id = (SELECT ids.vchat FROM ids);
SELECT is(
    (
        SELECT version FROM chatd.chats
        WHERE id = (SELECT ids.vchat FROM ids)
    ), (SELECT version FROM v0
    ),
    'a heartbeat-only update keeps the version'
);
SELECT is(
    (
        SELECT updated_at FROM chatd.chats
        WHERE id = (SELECT ids.vchat FROM ids)
    ), (SELECT updated_at FROM v0
    ),
    'a heartbeat-only update keeps updated_at'
);
UPDATE chatd.chats SET title = title
WHERE id = (SELECT ids.vchat FROM ids);
SELECT is(
    (
        SELECT version FROM chatd.chats
        WHERE id = (SELECT ids.vchat FROM ids)
    ), (SELECT version FROM v0
    ),
    'a no-op update keeps the version'
);
UPDATE chatd.chats SET title = 'new title'
WHERE id = (SELECT ids.vchat FROM ids);
SELECT is(
    (
        SELECT version FROM chatd.chats
        WHERE id = (SELECT ids.vchat FROM ids)
    ), (SELECT version + 1 FROM v0
    ),
    'a real change bumps the version by one'
);
UPDATE chatd.chats SET version = 1000
WHERE id = (SELECT ids.vchat FROM ids);
SELECT is(
    (
        SELECT version FROM chatd.chats
        WHERE id = (SELECT ids.vchat FROM ids)
    ), (SELECT version + 2 FROM v0
    ),
    'a version write is a touch: +1, never an arbitrary value'
);
SELECT is(
    (
        SELECT c.version FROM chatd.chats AS c, ids
        WHERE c.id = ids.fresh_chat
    ),
    1::bigint,
    'a chat and its first message inserted by one transaction stay at version 1 (no touch)'
);
SELECT ok(
    chatd.transition_allowed('waiting', 'waiting') AND chatd.transition_allowed('running', 'running'),
    'staying in a status is allowed'
);

SELECT * FROM finish();
ROLLBACK;
