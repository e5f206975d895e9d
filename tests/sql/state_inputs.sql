-- Hostile and careless inputs of the state machine (issue 10, items 7, 8,
-- 9, 12 and smaller gaps): the ChatError shape, retry_after bounds,
-- list_chats paging, disabled models and providers, empty text parts, and
-- sending to an error chat with a queue.
BEGIN;
SELECT plan(30);

CREATE TEMP TABLE t AS
SELECT
    u.org,
    chatd_test.user(u.org) AS usr,
    chatd_test.model_config() AS model
FROM (SELECT chatd_test.org() AS org) AS u;

-- A running chat; returns (chat, lease).
CREATE FUNCTION pg_temp.running_chat(p_model uuid DEFAULT NULL) RETURNS TABLE (chat uuid, lease bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_chat uuid := chatd_test.chat((SELECT t.usr FROM t), p_model => coalesce(p_model, (SELECT t.model FROM t)));
BEGIN
    RETURN QUERY SELECT v_chat, chatd_test.claim(v_chat);
END
$$;

-- record_failure of a fresh running chat with this error and retry_after.
CREATE FUNCTION pg_temp.fail(p_error jsonb, p_retry_after_ms bigint DEFAULT NULL)
RETURNS TABLE (status chatd.chat_status, delay interval)
LANGUAGE sql AS $$
    SELECT f.status, f.next_attempt_at - now()
    FROM pg_temp.running_chat() AS r
    CROSS JOIN LATERAL chatd.record_failure(r.chat, r.lease, p_error, p_retry_after_ms) AS f
$$;

-- item 7: the ChatError shape ----------------------------------------------------
CREATE TEMP TABLE lacking AS SELECT * FROM pg_temp.running_chat();
SELECT throws_ok(
    format(
        $$SELECT chatd.record_failure(%L, %s, '{"message": "m", "kind": "overloaded"}')$$,
        (SELECT lacking.chat FROM lacking), (SELECT lacking.lease FROM lacking)
    ),
    'CD007', NULL, 'an error without retryable is refused (it was retried)'
);
SELECT is(
    chatd_test.status((SELECT lacking.chat FROM lacking)), 'running',
    'the refused failure changed nothing (no retry scheduled)'
);
SELECT throws_ok(
    $$SELECT * FROM pg_temp.fail('{"message": "m", "kind": "generic", "retryable": "yes"}')$$,
    'CD007', NULL, 'retryable must be a JSON boolean, not "yes"'
);
SELECT throws_ok(
    $$SELECT * FROM pg_temp.fail('{"message": "m", "kind": "meltdown", "retryable": true}')$$,
    'CD007', NULL, 'an unknown kind is refused'
);
SELECT throws_ok(
    $$SELECT * FROM pg_temp.fail('{"message": 42, "kind": "generic", "retryable": true}')$$,
    'CD007', NULL, 'the message must be a string'
);
SELECT throws_ok(
    $$SELECT * FROM pg_temp.fail('{"message": "m", "kind": "generic", "retryable": true, "status_code": "500"}')$$,
    'CD007', NULL, 'status_code must be an integer or null'
);
SELECT throws_ok(
    $$SELECT * FROM pg_temp.fail('{"message": "m", "kind": "generic", "retryable": true, "evil": 1}')$$,
    'CD007', NULL, 'a ChatError has no other keys'
);
SELECT is(
    (
        SELECT f.status
        FROM pg_temp.fail(
                '{"message": "m", "kind": "rate_limit", "provider": "p", "retryable": true, "status_code": 429, "detail": null}'
            ) AS f
    ),
    'pending',
    'a complete ChatError as the worker sends it is accepted'
);

-- item 12: retry_after bounds --------------------------------------------------------
SELECT row_eq(
    $$SELECT * FROM pg_temp.fail('{"message": "m", "kind": "rate_limit", "retryable": true}', 1000000000000000)$$,
    row('pending'::chatd.chat_status, interval '24 hours'),
    'a retry_after of 10^15 ms is capped at 24 hours (not the year 33715)'
);
SELECT row_eq(
    $$SELECT * FROM pg_temp.fail('{"message": "m", "kind": "rate_limit", "retryable": true}', 9223372036854775807)$$,
    row('pending'::chatd.chat_status, interval '24 hours'),
    'a retry_after of 2^63-1 ms is capped at 24 hours (no 22008, the chat does not stay running)'
);
SELECT throws_ok(
    $$SELECT * FROM pg_temp.fail('{"message": "m", "kind": "rate_limit", "retryable": true}', -1)$$,
    'CD007', NULL, 'a negative retry_after is refused'
);

-- item 8: list_chats paging with an (updated_at, id) cursor -----------------------------
CREATE TEMP TABLE lister AS SELECT chatd_test.user(chatd_test.org()) AS usr;
SELECT chatd_test.chat((SELECT lister.usr FROM lister)) FROM generate_series(1, 5);
UPDATE chatd.chats SET updated_at = '2026-01-01'
WHERE owner_id = (SELECT lister.usr FROM lister);
CREATE FUNCTION pg_temp.page_through() RETURNS uuid[]
LANGUAGE plpgsql AS $$
DECLARE
    v_seen uuid [] := '{}';
    v_before timestamptz;
    v_before_id uuid;
    v_row record;
    v_found boolean := TRUE;
BEGIN
    WHILE v_found LOOP
        v_found := FALSE;
        FOR v_row IN
            SELECT l.id, l.updated_at
            FROM chatd.list_chats((SELECT lister.usr FROM lister), p_limit => 2, p_before => v_before,
                p_before_id => v_before_id) AS l
        LOOP
            v_seen := v_seen || v_row.id;
            v_before := v_row.updated_at;
            v_before_id := v_row.id;
            v_found := TRUE;
        END LOOP;
    END LOOP;
    RETURN v_seen;
END
$$;
SELECT is(
    cardinality(pg_temp.page_through()), 5,
    'paging by (updated_at, id) sees every chat once, even when all share one updated_at'
);
SELECT set_eq(
    $$SELECT unnest(pg_temp.page_through())$$,
    $$SELECT id FROM chatd.chats WHERE owner_id = (SELECT lister.usr FROM lister)$$,
    'paging returns exactly the user''s chats'
);
SELECT is(
    (
        SELECT count(*) FROM chatd.list_chats(
                (SELECT lister.usr FROM lister), p_limit => 10, p_before => '2026-01-01'
            )
    ),
    0::bigint,
    'p_before alone keeps its meaning: strictly older than p_before'
);

-- item 9: disabled models and providers -------------------------------------------------
CREATE TEMP TABLE dis AS
SELECT
    chatd_test.model_config() AS model,
    chatd_test.model_config() AS other_model;
CREATE TEMP TABLE dis_chat AS
SELECT chatd_test.chat_in('waiting', (SELECT t.usr FROM t)) AS waiting;
UPDATE chatd.chats SET model_config_id = (SELECT dis.model FROM dis)
WHERE id = (SELECT dis_chat.waiting FROM dis_chat);
UPDATE chatd.model_configs SET enabled = FALSE
WHERE id = (SELECT dis.model FROM dis);
SELECT throws_ok(
    format($$SELECT chatd.send_message(%L, %L, '"hi"')$$, (SELECT t.usr FROM t), (SELECT dis_chat.waiting FROM dis_chat)),
    'CD007', NULL, 'send_message without a model refuses a chat whose model is disabled'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.edit_message(%L, %L, %s, '"hi"')$$, (SELECT t.usr FROM t), (SELECT dis_chat.waiting FROM dis_chat),
        (
            SELECT min(m.id) FROM chatd.messages AS m
            WHERE m.chat_id = (SELECT dis_chat.waiting FROM dis_chat)
        )
    ),
    'CD007', NULL, 'edit_message without a model refuses a chat whose model is disabled'
);
SELECT is(
    (
        chatd.send_message(
            (SELECT t.usr FROM t), (SELECT dis_chat.waiting FROM dis_chat), '"hi"', 'queue', (SELECT dis.other_model FROM dis)
        ) ->> 'status'
    ),
    'pending',
    'send_message with an enabled model runs the chat on it'
);
UPDATE chatd.providers SET enabled = FALSE
WHERE id = (
        SELECT m.provider_id FROM chatd.model_configs AS m
        WHERE m.id = (SELECT dis.other_model FROM dis)
    );
SELECT throws_ok(
    format($$SELECT chatd.send_message(%L, %L, '"more"')$$, (SELECT t.usr FROM t), (SELECT dis_chat.waiting FROM dis_chat)),
    'CD007', NULL, 'send_message refuses (even to queue) when the chat''s provider is disabled'
);

-- claim time: a pending chat whose model was disabled after it was sent
CREATE TEMP TABLE claim_dis AS
SELECT
    chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS doomed,
    chatd_test.chat((SELECT t.usr FROM t), p_model => chatd_test.model_config()) AS fine;
UPDATE chatd.chats SET next_attempt_at = now() + interval '1 hour'
WHERE status = 'pending' AND id NOT IN (
        SELECT claim_dis.doomed FROM claim_dis
        UNION
        SELECT claim_dis.fine FROM claim_dis
    );
UPDATE chatd.chats SET next_attempt_at = '-infinity'
WHERE id = (SELECT claim_dis.doomed FROM claim_dis);
UPDATE chatd.model_configs SET enabled = FALSE
WHERE id = (SELECT t.model FROM t);
SELECT set_eq(
    $$SELECT chat_id FROM chatd.acquire_chats('w1', 10)$$,
    $$SELECT fine FROM claim_dis$$,
    'acquire_chats never hands out a turn on a disabled model, and still claims the other chats'
);
SELECT row_eq(
    format(
        $$SELECT status, last_error ->> 'kind', last_error -> 'retryable' FROM chatd.chats WHERE id = %L$$,
        (SELECT claim_dis.doomed FROM claim_dis)
    ),
    row('error'::chatd.chat_status, 'config'::text, 'false'::jsonb),
    'the chat on a disabled model goes to error, kind config, not retryable'
);
SELECT ok(
    (
        SELECT c.last_error ->> 'message' FROM chatd.chats AS c
        WHERE c.id = (SELECT claim_dis.doomed FROM claim_dis)
    )
    LIKE '%is disabled%',
    'the error says the model is disabled'
);

-- promote_queued_message on a disabled model
CREATE TEMP TABLE pq AS SELECT * FROM pg_temp.running_chat(chatd_test.model_config());
CREATE TEMP TABLE pq_id AS
SELECT (chatd.send_message((SELECT t.usr FROM t), (SELECT pq.chat FROM pq), '"later"') ->> 'queued_id')::bigint AS id;
UPDATE chatd.model_configs SET enabled = FALSE
WHERE id = (
        SELECT c.model_config_id FROM chatd.chats AS c
        WHERE c.id = (SELECT pq.chat FROM pq)
    );
SELECT throws_ok(
    format(
        $$SELECT chatd.promote_queued_message(%L, %L, %s)$$, (SELECT t.usr FROM t), (SELECT pq.chat FROM pq),
        (SELECT pq_id.id FROM pq_id)
    ),
    'CD007', NULL, 'promote_queued_message refuses a disabled model'
);

-- smaller gaps ------------------------------------------------------------------------
SELECT throws_ok(
    $$SELECT chatd._content('[{"type": "text", "text": ""}]')$$,
    'CD007', NULL, 'an empty text part is refused like empty content'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.create_chat(%L, %L, '[{"type": "text", "text": ""}]', %L)$$,
        (SELECT t.usr FROM t), (SELECT t.org FROM t), chatd_test.model_config()
    ),
    'CD007', NULL, 'create_chat refuses an empty text part'
);
SELECT is(
    chatd._content('[{"type": "reasoning", "text": ""}, {"type": "text", "text": "x"}]') -> 1 ->> 'text', 'x',
    'a non-empty text part passes'
);

-- an error chat that kept a queue: sending resolves it (the queue head goes out)
CREATE TEMP TABLE eq AS SELECT * FROM pg_temp.running_chat(chatd_test.model_config());
SELECT chatd.send_message((SELECT t.usr FROM t), (SELECT eq.chat FROM eq), '"queued first"');
SELECT chatd.record_failure(
    (SELECT eq.chat FROM eq), (SELECT eq.lease FROM eq), '{"message": "boom", "kind": "generic", "retryable": false}'
);
SELECT is(chatd_test.status((SELECT eq.chat FROM eq)), 'error', 'the failed turn left the chat in error with its queue');
SELECT is(
    (chatd.send_message((SELECT t.usr FROM t), (SELECT eq.chat FROM eq), '"second"') ->> 'status'),
    'pending',
    'sending to an error chat with a queue runs it: the queue head goes out'
);
SELECT is(
    (
        SELECT array_agg(m.content -> 0 ->> 'text' ORDER BY m.id) FROM chatd.messages AS m
        WHERE m.chat_id = (SELECT eq.chat FROM eq) AND m.role = 'user'
    ),
    ARRAY['hello', 'queued first'],
    'the queue head became the next user message (FIFO)'
);
SELECT is(
    (
        SELECT array_agg(q.content -> 0 ->> 'text') FROM chatd.queued_messages AS q
        WHERE q.chat_id = (SELECT eq.chat FROM eq)
    ),
    ARRAY['second'],
    'the new message waits behind it in the queue'
);
SELECT is(
    (
        SELECT c.last_error FROM chatd.chats AS c
        WHERE c.id = (SELECT eq.chat FROM eq)
    ), NULL::jsonb,
    'the error is cleared'
);

SELECT * FROM finish();
ROLLBACK;
