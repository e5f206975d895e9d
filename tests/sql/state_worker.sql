-- Worker functions: acquire (due, archived, SKIP LOCKED order, lease bump,
-- payload), heartbeat, publish_parts, finish_turn (with queue promotion and
-- cost), fencing (CD004) of every worker write, record_failure retry
-- arithmetic, release, stale recovery, janitor, save_interrupted_turn.
BEGIN;
SELECT plan(85);

CREATE TEMP TABLE t AS
SELECT
    u.org,
    u.usr,
    chatd_test.model_config(p_input_price => 1, p_output_price => 2) AS model
FROM (
    SELECT
        o AS org,
        chatd_test.user(o) AS usr
    FROM chatd_test.org() AS o
) AS u;

-- acquire ------------------------------------------------------------------
CREATE TEMP TABLE c AS
SELECT
    chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t), p_text => 'first') AS due,
    chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS later,
    chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS archived;
UPDATE chatd.chats SET next_attempt_at = now() + interval '1 hour'
WHERE id = (SELECT c.later FROM c);
UPDATE chatd.chats SET archived = TRUE
WHERE id = (SELECT c.archived FROM c);
UPDATE chatd.chats SET next_attempt_at = now() - interval '1 day'
WHERE id = (SELECT c.due FROM c);
SELECT chatd.create_chat((SELECT t.usr FROM t), (SELECT t.org FROM t), '"x"', (SELECT t.model FROM t)) IS NOT NULL
    AS created;
UPDATE chatd.chats SET next_attempt_at = now() + interval '1 hour'
WHERE status = 'pending' AND id NOT IN (
        SELECT due FROM c
        UNION
        SELECT archived FROM c
    );

CREATE TEMP TABLE a AS SELECT * FROM chatd.acquire_chats('w1', 10);
SELECT is((SELECT count(*) FROM a), 1::bigint, 'acquire claims only due, non-archived pending chats');
SELECT is((SELECT a.chat_id FROM a), (SELECT c.due FROM c), 'the due chat is claimed');
SELECT is((SELECT a.lease FROM a), 1::bigint, 'the claim bumps the lease (0 -> 1)');
SELECT is((SELECT a.attempt FROM a), 0, 'attempt 0: first try of the turn');
SELECT is((SELECT model ->> 'model_config_id' FROM a), (SELECT model::text FROM t), 'model config in the payload');
SELECT is((SELECT model -> 'provider' ->> 'kind' FROM a), 'openai-compat', 'provider in the payload');
SELECT is(
    (SELECT messages -> 0 -> 'content' -> 0 ->> 'text' FROM a), 'first',
    'messages (visible to the model) in the payload'
);
SELECT is(chatd_test.status((SELECT c.due FROM c)), 'running', 'pending -> running');
SELECT is(
    (
        SELECT worker_id FROM chatd.chats
        WHERE id = (SELECT c.due FROM c)
    ), 'w1', 'the worker owns the claimed chat'
);
SELECT is((SELECT count(*) FROM chatd.acquire_chats('w2', 10)), 0::bigint, 'nothing else is due');
SELECT is(chatd_test.status((SELECT c.archived FROM c)), 'pending', 'an archived pending chat is not claimed');

-- heartbeat ----------------------------------------------------------------
CREATE TEMP TABLE v AS SELECT version FROM chatd.chats
WHERE id = (SELECT c.due FROM c);
UPDATE chatd.workers SET heartbeat_at = now() - interval '1 minute'
WHERE id = 'w1';
-- a written row gets a new ctid (a HOT update too); the counters are this transaction's
CREATE TEMP TABLE hb0 AS SELECT
    (
        SELECT ctid FROM chatd.chats
        WHERE id = (SELECT c.due FROM c)
    ) AS chat_ctid,
    (
        SELECT n_tup_upd + n_tup_ins FROM pg_stat_xact_user_tables
        WHERE relid = 'chatd.chats'::regclass
    ) AS chats_writes;
SELECT is_empty(
    format($$SELECT * FROM chatd.heartbeat('w1', ARRAY[%L]::uuid[], ARRAY[1]::bigint[])$$, (SELECT c.due FROM c)),
    'a heartbeat under the current lease returns nothing lost'
);
SELECT is(
    (
        SELECT ctid FROM chatd.chats
        WHERE id = (SELECT c.due FROM c)
    ), (SELECT hb0.chat_ctid FROM hb0
    ),
    'a heartbeat writes no chat row (the chat''s tuple is unchanged)'
);
SELECT is(
    (
        SELECT n_tup_upd + n_tup_ins FROM pg_stat_xact_user_tables
        WHERE relid = 'chatd.chats'::regclass
    ),
    (SELECT hb0.chats_writes FROM hb0),
    'a heartbeat updates no row of chatd.chats'
);
SELECT is(
    (
        SELECT heartbeat_at FROM chatd.workers
        WHERE id = 'w1'
    ), now(),
    'a heartbeat refreshes the worker''s row'
);
SELECT is(
    (
        SELECT version FROM chatd.chats
        WHERE id = (SELECT c.due FROM c)
    ), (SELECT version FROM v
    ),
    'a heartbeat does not bump the version'
);
SELECT results_eq(
    format(
        $$SELECT * FROM chatd.heartbeat('w1', ARRAY[%L, %L]::uuid[], ARRAY[7, 1]::bigint[])$$,
        (SELECT c.due FROM c), (SELECT c.later FROM c)
    ),
    format($$SELECT x FROM unnest(ARRAY[%L, %L]::uuid[]) AS x ORDER BY x$$, (SELECT c.due FROM c), (SELECT c.later FROM c)),
    'a heartbeat returns the chats not owned under the given lease'
);
SELECT results_eq(
    format($$SELECT * FROM chatd.heartbeat('w2', ARRAY[%L]::uuid[], ARRAY[1]::bigint[])$$, (SELECT c.due FROM c)),
    format($$SELECT %L::uuid$$, (SELECT c.due FROM c)),
    'another worker cannot heartbeat a chat it does not own'
);
SELECT throws_ok(
    $$SELECT * FROM chatd.heartbeat('w1', ARRAY[gen_random_uuid()], ARRAY[1, 2]::bigint[])$$,
    'CD007', NULL, 'heartbeat arrays must have the same length'
);

-- publish_parts --------------------------------------------------------------
SELECT lives_ok(
    format($$SELECT chatd.publish_parts(%L, 1, 0, '[{"type": "text", "text": "He"}]')$$, (SELECT c.due FROM c)),
    'publish_parts under the current lease'
);
SELECT lives_ok(
    format($$SELECT chatd.publish_parts(%L, 1, 0, '[{"type": "text", "text": "He"}]')$$, (SELECT c.due FROM c)),
    'publish_parts is idempotent per seq'
);
SELECT throws_ok(
    format($$SELECT chatd.publish_parts(%L, 2, 1, '[]')$$, (SELECT c.due FROM c)),
    'CD004', NULL, 'publish_parts under a wrong lease: lease lost'
);
SELECT throws_ok(
    format($$SELECT chatd.publish_parts(%L, 1, 1, '{}')$$, (SELECT c.due FROM c)),
    'CD007', NULL, 'parts must be an array'
);
SELECT is(
    (
        SELECT count(*) FROM chatd.stream_parts
        WHERE chat_id = (SELECT c.due FROM c)
    ), 1::bigint, 'one part stored'
);

-- finish_turn ----------------------------------------------------------------
SELECT throws_ok(
    format($$SELECT chatd.finish_turn(%L, 2, '"x"')$$, (SELECT c.due FROM c)),
    'CD004', NULL, 'finish_turn under a wrong lease: lease lost'
);
SELECT throws_ok(
    format($$SELECT chatd.finish_turn(%L, NULL, '"x"')$$, (SELECT c.due FROM c)),
    'CD004', NULL, 'finish_turn under a NULL lease: lease lost (a NULL lease never passes the fence)'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.record_failure(%L, NULL, '{"message": "x", "kind": "generic", "retryable": true}')$$,
        (SELECT c.due FROM c)
    ),
    'CD004', NULL, 'record_failure under a NULL lease: lease lost'
);
SELECT throws_ok(
    format($$SELECT chatd.finish_turn(%L, 1, '42')$$, (SELECT c.due FROM c)),
    'CD007', NULL, 'finish_turn validates content'
);
SELECT throws_ok(
    format($$SELECT chatd.finish_turn(gen_random_uuid(), 1, '"x"')$$),
    'CD001', NULL, 'finish_turn of an unknown chat'
);
CREATE TEMP TABLE f AS
SELECT chatd.finish_turn(
    (SELECT c.due FROM c), 1,
    '[{"type": "text", "text": "answer"}]',
    '{"input_tokens": 1000, "output_tokens": 500, "reasoning_tokens": 7}',
    'resp-1', 1234,
    '[{"role": "assistant", "content": [{"type": "tool-call", "id": "t1"}]},
      {"role": "tool", "content": [{"type": "tool-result", "id": "t1"}]}]'
) AS id;
SELECT is(chatd_test.status((SELECT c.due FROM c)), 'waiting', 'finish_turn with an empty queue: running -> waiting');
SELECT results_eq(
    format($$SELECT role::text FROM chatd.messages WHERE chat_id = %L ORDER BY id$$, (SELECT c.due FROM c)),
    ARRAY['user', 'assistant', 'tool', 'assistant'],
    'tool rounds first, then the final assistant message'
);
SELECT is(
    (
        SELECT max(id) FROM chatd.messages
        WHERE chat_id = (SELECT c.due FROM c)
    ), (SELECT id FROM f
    ),
    'finish_turn returns the assistant message id'
);
SELECT row_eq(
    format(
        $$SELECT input_tokens, output_tokens, reasoning_tokens, total_cost_micros, runtime_ms, provider_response_id
          FROM chatd.messages WHERE id = %s$$, (SELECT f.id FROM f)
    ),
    row(1000::bigint, 500::bigint, 7::bigint, 2000::bigint, 1234::bigint, 'resp-1'::text),
    'usage, cost (1000 x $1 + 500 x $2 per Mtok = 2000 micros), runtime and response id persisted'
);
SELECT row_eq(
    format($$SELECT worker_id, lease, attempt FROM chatd.chats WHERE id = %L$$, (SELECT c.due FROM c)),
    row(NULL::text, 2::bigint, 0),
    'after finish_turn: no worker, lease bumped (turn over), attempt reset'
);
SELECT throws_ok(
    format($$SELECT chatd.finish_turn(%L, 1, '"again"')$$, (SELECT c.due FROM c)),
    'CD004', NULL, 'a second finish_turn under the old lease is refused'
);

-- finish_turn promotes the queue head
CREATE TEMP TABLE q AS SELECT chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS chat;
CREATE TEMP TABLE ql AS SELECT chatd_test.claim((SELECT q.chat FROM q)) AS lease;
SELECT chatd.send_message((SELECT t.usr FROM t), (SELECT q.chat FROM q), '"queued one"');
SELECT chatd.send_message((SELECT t.usr FROM t), (SELECT q.chat FROM q), '"queued two"');
SELECT chatd.finish_turn((SELECT q.chat FROM q), (SELECT ql.lease FROM ql), '"reply"');
SELECT is(chatd_test.status((SELECT q.chat FROM q)), 'pending', 'finish_turn with a queue: running -> pending');
SELECT results_eq(
    format(
        $$SELECT role::text || ':' || (content -> 0 ->> 'text') FROM chatd.messages WHERE chat_id = %L ORDER BY id$$,
        (SELECT q.chat FROM q)
    ),
    ARRAY['user:hello', 'assistant:reply', 'user:queued one'],
    'the queue head became the next user message, after the reply'
);
SELECT results_eq(
    format($$SELECT content -> 0 ->> 'text' FROM chatd.queued_messages WHERE chat_id = %L$$, (SELECT q.chat FROM q)),
    ARRAY['queued two'],
    'the rest of the queue stays'
);

-- record_failure: retry arithmetic (base 1 s, cap 60 s) --------------------
CREATE TEMP TABLE r AS SELECT chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS chat;
CREATE FUNCTION pg_temp.fail(p_retry_after bigint DEFAULT NULL, p_retryable boolean DEFAULT TRUE)
RETURNS TABLE (status chatd.chat_status, attempt integer, delay interval)
LANGUAGE sql AS $$
    SELECT f.status, f.attempt, f.next_attempt_at - now()
    FROM chatd.record_failure(
        (SELECT r.chat FROM r), chatd_test.claim((SELECT r.chat FROM r)),
        jsonb_build_object('message', 'overloaded', 'kind', 'overloaded', 'provider', 'openai',
            'retryable', p_retryable, 'status_code', 529),
        p_retry_after
    ) AS f
$$;
SELECT row_eq(
    'SELECT * FROM pg_temp.fail()', row('pending'::chatd.chat_status, 1, interval '1 second'),
    'failure 1: retry after base = 1 s'
);
SELECT row_eq(
    'SELECT * FROM pg_temp.fail()', row('pending'::chatd.chat_status, 2, interval '2 seconds'),
    'failure 2: 2 s'
);
SELECT row_eq(
    'SELECT * FROM pg_temp.fail()', row('pending'::chatd.chat_status, 3, interval '4 seconds'),
    'failure 3: 4 s'
);
SELECT row_eq(
    'SELECT * FROM pg_temp.fail(500)', row('pending'::chatd.chat_status, 4, interval '8 seconds'),
    'a retry-after smaller than the backoff does not shorten it'
);
SELECT row_eq(
    'SELECT * FROM pg_temp.fail(30000)', row('pending'::chatd.chat_status, 5, interval '30 seconds'),
    'a retry-after larger than the backoff (16 s) floors the delay'
);
SELECT is(chatd_test.status((SELECT r.chat FROM r)), 'pending', 'running -> pending on a retryable failure');
SELECT row_eq(
    format($$SELECT retry_state ->> 'attempt', retry_state ->> 'delay_ms', retry_state -> 'error' ->> 'kind',
        last_error ->> 'status_code' FROM chatd.chats WHERE id = %L$$, (SELECT r.chat FROM r)),
    row('5'::text, '30000'::text, 'overloaded'::text, '529'::text),
    'retry_state {attempt, delay_ms, error}; last_error keeps the full error'
);
SELECT row_eq(
    'SELECT * FROM pg_temp.fail()', row('pending'::chatd.chat_status, 6, interval '32 seconds'),
    'failure 6: 32 s'
);
SELECT row_eq(
    'SELECT * FROM pg_temp.fail()', row('pending'::chatd.chat_status, 7, interval '60 seconds'),
    'failure 7: 64 s capped at 60 s'
);
SELECT row_eq(
    'SELECT * FROM pg_temp.fail(90000)', row('pending'::chatd.chat_status, 8, interval '90 seconds'),
    'a retry-after above the cap still floors the delay'
);
UPDATE chatd.chats SET attempt = 23
WHERE id = (SELECT r.chat FROM r);
SELECT row_eq(
    'SELECT * FROM pg_temp.fail()', row('pending'::chatd.chat_status, 24, interval '60 seconds'),
    'failure 24 of 25: still retried, capped'
);
SELECT is(
    (SELECT status FROM pg_temp.fail()), 'error'::chatd.chat_status,
    'failure 25 (settings.max_attempts): running -> error'
);
SELECT is(
    (
        SELECT last_error ->> 'kind' FROM chatd.chats
        WHERE id = (SELECT r.chat FROM r)
    ), 'overloaded',
    'the error keeps the last ChatError'
);
UPDATE chatd.settings SET max_attempts = 3;
SELECT chatd.send_message((SELECT t.usr FROM t), (SELECT r.chat FROM r), '"retry please"');
SELECT is(
    (
        SELECT attempt FROM chatd.chats
        WHERE id = (SELECT r.chat FROM r)
    ), 0,
    'a new message starts a new turn: attempt 0'
);
SELECT row_eq(
    'SELECT status, attempt FROM pg_temp.fail(NULL, FALSE)', row('error'::chatd.chat_status, 1),
    'a non-retryable error goes straight to error'
);
SELECT throws_ok(
    format($$SELECT * FROM chatd.record_failure(%L, 99, '{"message": "x", "kind": "generic", "retryable": false}')$$, (SELECT r.chat FROM r)),
    'CD004', NULL, 'record_failure under a lost lease'
);
SELECT throws_ok(
    format($$SELECT * FROM chatd.record_failure(%L, 1, '{"kind": "generic"}')$$, (SELECT r.chat FROM r)),
    'CD007', NULL, 'record_failure needs a ChatError with message and kind'
);

-- release_chats ----------------------------------------------------------------
CREATE TEMP TABLE rel AS SELECT
    chatd_test.chat_in('running') AS a,
    chatd_test.chat_in('running') AS b;
UPDATE chatd.chats SET worker_id = 'w-release'
WHERE id = (SELECT rel.a FROM rel);
SELECT is(chatd.release_chats('w-release'), 1, 'release_chats releases the running chats of that worker only');
SELECT is(chatd_test.status((SELECT rel.a FROM rel)), 'pending', 'release: running -> pending');
SELECT is(chatd_test.status((SELECT rel.b FROM rel)), 'running', 'another worker''s chat stays running');
SELECT is(chatd.release_chats('w1', ARRAY[gen_random_uuid()]), 0, 'release of chats not owned: nothing');

-- recover_stale_chats ---------------------------------------------------------
-- Staleness is per worker (chatd.workers), or per claim for a chat whose
-- worker has no row. Each chat here runs under a worker of its own.
UPDATE chatd.settings SET max_recoveries = 2;
CREATE TEMP TABLE st AS SELECT
    chatd_test.chat((SELECT t.usr FROM t)) AS chat,
    chatd_test.chat((SELECT t.usr FROM t)) AS fresh,
    chatd_test.chat((SELECT t.usr FROM t)) AS old_claim,
    chatd_test.chat((SELECT t.usr FROM t)) AS no_row,
    chatd_test.chat((SELECT t.usr FROM t)) AS no_row_new;
SELECT
    chatd_test.claim((SELECT st.chat FROM st), 'w-stale') AS lease_chat,
    chatd_test.claim((SELECT st.fresh FROM st), 'w-fresh') AS lease_fresh,
    chatd_test.claim((SELECT st.old_claim FROM st), 'w-old-claim') AS lease_old_claim,
    chatd_test.claim((SELECT st.no_row FROM st), 'w-gone') AS lease_no_row,
    chatd_test.claim((SELECT st.no_row_new FROM st), 'w-gone-new') AS lease_no_row_new;
UPDATE chatd.chats SET next_attempt_at = now() + interval '1 hour'
WHERE status = 'pending';
-- old claims: the worker row alone decides for these two
UPDATE chatd.chats SET heartbeat_at = now() - interval '1 hour'
WHERE id IN ((SELECT st.chat FROM st), (SELECT st.old_claim FROM st));
SELECT is(
    chatd.recover_stale_chats(), 0,
    'no stale worker: nothing recovered, even a chat claimed long ago by a live worker'
);
DELETE FROM chatd.workers
WHERE id IN ('w-gone', 'w-gone-new');
UPDATE chatd.chats SET heartbeat_at = now() - interval '1 hour'
WHERE id = (SELECT st.no_row FROM st);
CREATE FUNCTION pg_temp.stale_cycle() RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_recovered integer;
BEGIN
    -- the turn streamed before its worker went silent: the recovery counts
    PERFORM chatd.publish_parts(c.id, c.lease, 0, '[{"type": "text", "text": "x"}]')
    FROM chatd.chats AS c WHERE c.id = (SELECT st.chat FROM st);
    PERFORM chatd_test.make_stale('w-stale');
    v_recovered := chatd.recover_stale_chats();
    DELETE FROM chatd.stream_parts AS p WHERE p.chat_id = (SELECT st.chat FROM st);
    RETURN v_recovered;
END
$$;
SELECT is(
    pg_temp.stale_cycle(), 2,
    'recovered: the chat of a stale worker, and the chat claimed long ago by a worker with no row'
);
SELECT is(chatd_test.status((SELECT st.chat FROM st)), 'pending', 'recovery: running -> pending (stale worker row)');
SELECT is(chatd_test.status((SELECT st.no_row FROM st)), 'pending', 'recovery: running -> pending (no worker row, old claim)');
SELECT is(chatd_test.status((SELECT st.fresh FROM st)), 'running', 'the chat of a fresh worker keeps running');
SELECT is(
    chatd_test.status((SELECT st.old_claim FROM st)), 'running',
    'a chat claimed long ago keeps running while its worker''s row is fresh'
);
SELECT is(
    chatd_test.status((SELECT st.no_row_new FROM st)), 'running',
    'a chat claimed recently keeps running though its worker has no row'
);
SELECT results_eq(
    format(
        $$SELECT * FROM chatd.heartbeat('w-stale', ARRAY[%L]::uuid[], ARRAY[1]::bigint[])$$, (SELECT st.chat FROM st)
    ),
    format($$SELECT %L::uuid$$, (SELECT st.chat FROM st)),
    'the recovered worker''s next heartbeat reports the chat lost'
);
SELECT chatd_test.claim((SELECT st.chat FROM st), 'w-stale');
SELECT is(pg_temp.stale_cycle(), 1, 'second recovery of the same turn');
SELECT chatd_test.claim((SELECT st.chat FROM st), 'w-stale');
SELECT is(pg_temp.stale_cycle(), 1, 'third recovery (more than max_recoveries = 2)');
SELECT row_eq(
    format($$SELECT status, last_error ->> 'kind', recoveries FROM chatd.chats WHERE id = %L$$, (SELECT st.chat FROM st)),
    row('error'::chatd.chat_status, 'timeout'::text, 3),
    'a turn recovered more than max_recoveries times: running -> error, kind timeout'
);
-- worker rows: the janitor drops long-silent ones that run nothing;
-- release_chats(worker) drops the releasing worker's
SELECT chatd_test.make_stale('w-stale', '2 hours');
SELECT chatd_test.make_stale('w-fresh', '2 hours');
SELECT chatd.janitor();
SELECT is(
    (
        SELECT array_agg(id ORDER BY id) FROM chatd.workers
        WHERE id IN ('w-stale', 'w-fresh')
    ), ARRAY['w-fresh'
    ],
    'the janitor deletes the row of a long-silent worker that runs no chat, not of one that runs a chat'
);
SELECT is(chatd.release_chats('w-old-claim'), 1, 'release_chats releases the worker''s chat');
SELECT ok(
    NOT EXISTS (
        SELECT 1 FROM chatd.workers
        WHERE id = 'w-old-claim'
    ),
    'release_chats(worker) deletes the worker''s row'
);

-- janitor and save_interrupted_turn -------------------------------------------
CREATE TEMP TABLE j AS SELECT chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS chat;
CREATE TEMP TABLE jl AS SELECT chatd_test.claim((SELECT j.chat FROM j)) AS lease;
SELECT chatd.publish_parts((SELECT j.chat FROM j), (SELECT jl.lease FROM jl), 0, '[{"type": "text", "text": "par"}]');
UPDATE chatd.settings SET stream_part_retention = '0';
SELECT is(chatd.janitor(), 1, 'the janitor drops parts of ended turns only (one old part of the finished turn)');
SELECT is(chatd.interrupt_chat((SELECT t.usr FROM t), (SELECT j.chat FROM j)), 'waiting', 'interrupt: running -> waiting');
SELECT ok(
    chatd.save_interrupted_turn((SELECT j.chat FROM j), (SELECT jl.lease FROM jl), '"partial"', '{"output_tokens": 3}') > 0,
    'the interrupted worker saves its partial message under its unchanged lease'
);
SELECT is(chatd.janitor(), 1, 'the interrupted turn''s parts are dropped after retention');
SELECT chatd.send_message((SELECT t.usr FROM t), (SELECT j.chat FROM j), '"next"');
SELECT chatd_test.claim((SELECT j.chat FROM j));
SELECT throws_ok(
    format($$SELECT chatd.save_interrupted_turn(%L, %s, '"late"')$$, (SELECT j.chat FROM j), (SELECT jl.lease FROM jl)),
    'CD004', NULL, 'after a newer claim the partial can no longer be saved'
);

-- finish_turns: a batch in one statement; a lost lease is reported, not raised
CREATE TEMP TABLE fb AS
SELECT
    chatd_test.chat(chatd_test.user(chatd_test.org())) AS a,
    chatd_test.chat(chatd_test.user(chatd_test.org())) AS b,
    chatd_test.chat(chatd_test.user(chatd_test.org())) AS lost;
CREATE TEMP TABLE fbl AS
SELECT
    chatd_test.claim((SELECT fb.a FROM fb)) AS lease_a,
    chatd_test.claim((SELECT fb.b FROM fb)) AS lease_b,
    chatd_test.claim((SELECT fb.lost FROM fb)) AS lease_lost;
CREATE TEMP TABLE fbr AS
SELECT
    r.chat_id,
    r.message_id
FROM chatd.finish_turns(
        jsonb_build_array(
            jsonb_build_object(
                'chat_id', (SELECT fb.a FROM fb), 'lease', (SELECT fbl.lease_a FROM fbl),
                'content', '[{"type": "text", "text": "answer a"}]'::jsonb,
                'usage', '{"input_tokens": 10, "output_tokens": 5}'::jsonb,
                'seq', 0, 'parts', '[{"type": "text", "text": "answer a"}]'::jsonb
            ),
            jsonb_build_object(
                'chat_id', (SELECT fb.b FROM fb), 'lease', (SELECT fbl.lease_b FROM fbl),
                'content', '[{"type": "text", "text": "answer b"}]'::jsonb
            ),
            jsonb_build_object(
                'chat_id', (SELECT fb.lost FROM fb), 'lease', (SELECT fbl.lease_lost FROM fbl) - 1,
                'content', '[{"type": "text", "text": "too late"}]'::jsonb
            )
        )
    ) AS r;
SELECT is(
    (
        SELECT count(*) FROM fbr
        WHERE message_id IS NOT NULL
    ), 2::bigint,
    'finish_turns finishes every turn whose lease holds'
);
SELECT is(
    (SELECT ARRAY[chatd_test.status(fb.a), chatd_test.status(fb.b)]::text[] FROM fb),
    ARRAY['waiting', 'waiting'],
    'finish_turns: both chats are waiting'
);
SELECT ok(
    (
        SELECT fbr.message_id IS NULL FROM fbr, fb
        WHERE fbr.chat_id = fb.lost
    ),
    'finish_turns reports a lost lease with message_id NULL instead of raising'
);
SELECT is(
    (SELECT chatd_test.status(fb.lost)::text FROM fb), 'running',
    'the lost turn''s chat is untouched (still running under its real lease)'
);
SELECT is(
    (
        SELECT count(*) FROM chatd.messages AS m, fb
        WHERE m.chat_id = fb.lost AND m.role = 'assistant'
    ),
    0::bigint,
    'nothing is written for the lost turn'
);
SELECT is(
    (
        SELECT m.total_cost_micros FROM chatd.messages AS m, fb
        WHERE m.chat_id = fb.a AND m.role = 'assistant'
    ),
    20::bigint,
    'finish_turns computes the cost like finish_turn (10 x 1 + 5 x 2)'
);
SELECT throws_ok(
    format(
        $$SELECT * FROM chatd.finish_turns(jsonb_build_array(
            jsonb_build_object('chat_id', %L::uuid, 'lease', %s, 'content', '[{"type": "text", "text": "ok"}]'::jsonb),
            jsonb_build_object('chat_id', %L::uuid, 'lease', %s, 'content', '"x"'::jsonb, 'usage', '"bad"'::jsonb)
        ))$$,
        chatd_test.chat_in('running'), 0, (SELECT fb.lost FROM fb), (SELECT fbl.lease_lost FROM fbl)
    ),
    'CD007', NULL,
    'any other error aborts the whole batch (the worker then finishes one by one)'
);

SELECT * FROM finish();
ROLLBACK;
