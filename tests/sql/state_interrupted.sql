-- save_interrupted_turn (issue 10, items 5 and 6): only the lease of a turn
-- that was stopped while it ran may save, once; a partial answer never
-- reaches the model after a newer question; it is billed at the prices of
-- the model that ran it.
BEGIN;
SELECT plan(21);

CREATE TEMP TABLE t AS
SELECT
    u.usr,
    chatd_test.model_config(p_input_price => 1, p_output_price => 2) AS cheap,
    chatd_test.model_config(p_input_price => 100, p_output_price => 200) AS dear
FROM (SELECT chatd_test.user(chatd_test.org()) AS usr) AS u;

-- What the next turn sends to the model: live messages the model sees.
CREATE FUNCTION pg_temp.model_texts(p_chat uuid) RETURNS text[]
LANGUAGE sql AS $$
    SELECT array_agg(m.role::text || ':' || (m.content -> 0 ->> 'text') ORDER BY m.id)
    FROM chatd.messages AS m
    WHERE m.chat_id = p_chat AND NOT m.deleted AND m.visibility IN ('model', 'both')
$$;

-- A chat on the cheap model whose first turn ('Q1') is running; returns the lease.
CREATE TABLE pg_temp.running (name text PRIMARY KEY, chat uuid, lease bigint);
CREATE FUNCTION pg_temp.start(p_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_chat uuid := chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.cheap FROM t), p_text => 'Q1');
BEGIN
    INSERT INTO pg_temp.running VALUES (p_name, v_chat, chatd_test.claim(v_chat));
END
$$;
CREATE FUNCTION pg_temp.chat(p_name text) RETURNS uuid
LANGUAGE sql AS $$ SELECT r.chat FROM pg_temp.running AS r WHERE r.name = p_name $$;
CREATE FUNCTION pg_temp.save(p_name text) RETURNS bigint
LANGUAGE sql AS $$
    SELECT chatd.save_interrupted_turn(
        r.chat, r.lease, '"A1-partial"', '{"input_tokens": 1000, "output_tokens": 1000}'
    )
    FROM pg_temp.running AS r WHERE r.name = p_name
$$;
CREATE FUNCTION pg_temp.saved(p_name text) RETURNS TABLE (visibility text, cost bigint)
LANGUAGE sql AS $$
    SELECT m.visibility::text, m.total_cost_micros FROM chatd.messages AS m
    WHERE m.chat_id = pg_temp.chat(p_name) AND m.role = 'assistant'
$$;

-- item 5: interrupt, then send -------------------------------------------------
SELECT pg_temp.start('send');
SELECT chatd.interrupt_chat((SELECT t.usr FROM t), pg_temp.chat('send'));
SELECT chatd.send_message((SELECT t.usr FROM t), pg_temp.chat('send'), '"Q2"');
SELECT lives_ok($$SELECT pg_temp.save('send')$$, 'interrupt then send: the old worker may still save (billed)');
SELECT is(
    pg_temp.model_texts(pg_temp.chat('send')), ARRAY['user:Q1', 'user:Q2'],
    'interrupt then send: the partial answer is not sent to the model after Q2'
);
SELECT row_eq(
    $$SELECT * FROM pg_temp.saved('send')$$, row('user'::text, 3000::bigint),
    'interrupt then send: the partial answer is kept for the user and billed'
);

-- busy_behavior interrupt --------------------------------------------------------
SELECT pg_temp.start('busy');
SELECT chatd.send_message((SELECT t.usr FROM t), pg_temp.chat('busy'), '"Q2"', 'interrupt');
SELECT pg_temp.save('busy');
SELECT is(
    pg_temp.model_texts(pg_temp.chat('busy')), ARRAY['user:Q1', 'user:Q2'],
    'busy_behavior interrupt: the partial answer is not sent to the model after Q2'
);

-- an interrupt that promotes the queue head -----------------------------------------
SELECT pg_temp.start('head');
SELECT chatd.send_message((SELECT t.usr FROM t), pg_temp.chat('head'), '"Q2"');
SELECT is(
    chatd.interrupt_chat((SELECT t.usr FROM t), pg_temp.chat('head')), 'pending',
    'interrupt with a queue: the head goes out'
);
SELECT pg_temp.save('head');
SELECT is(
    pg_temp.model_texts(pg_temp.chat('head')), ARRAY['user:Q1', 'user:Q2'],
    'interrupt promoting the queue head: the partial answer is not sent to the model after Q2'
);

-- promote_queued_message ----------------------------------------------------------
SELECT pg_temp.start('promote');
CREATE TEMP TABLE q AS
SELECT (chatd.send_message((SELECT t.usr FROM t), pg_temp.chat('promote'), '"Q2"') ->> 'queued_id')::bigint AS id;
SELECT chatd.promote_queued_message((SELECT t.usr FROM t), pg_temp.chat('promote'), (SELECT q.id FROM q));
SELECT pg_temp.save('promote');
SELECT is(
    pg_temp.model_texts(pg_temp.chat('promote')), ARRAY['user:Q1', 'user:Q2'],
    'promote_queued_message: the partial answer is not sent to the model after Q2'
);

-- a plain interrupt: the partial answer is part of the conversation ------------------
SELECT pg_temp.start('plain');
SELECT chatd.interrupt_chat((SELECT t.usr FROM t), pg_temp.chat('plain'));
SELECT pg_temp.save('plain');
SELECT chatd.send_message((SELECT t.usr FROM t), pg_temp.chat('plain'), '"Q2"');
SELECT is(
    pg_temp.model_texts(pg_temp.chat('plain')), ARRAY['user:Q1', 'assistant:A1-partial', 'user:Q2'],
    'interrupt, save, then send: the partial answer precedes Q2 and the model sees it'
);

-- billing at the model that ran the turn ----------------------------------------------
SELECT pg_temp.start('price');
SELECT chatd.send_message(
    (SELECT t.usr FROM t), pg_temp.chat('price'), '"Q2"', 'interrupt', (SELECT t.dear FROM t)
);
SELECT is(
    (
        SELECT c.model_config_id FROM chatd.chats AS c
        WHERE c.id = pg_temp.chat('price')
    ), (SELECT t.dear FROM t
    ),
    'the next turn runs on the new model'
);
SELECT pg_temp.save('price');
SELECT row_eq(
    $$SELECT * FROM pg_temp.saved('price')$$, row('user'::text, 3000::bigint),
    'a partial turn is billed at the prices of the model that ran it (3,000, not 300,000 micro-dollars)'
);
SELECT is(
    (
        SELECT m.model_config_id FROM chatd.messages AS m
        WHERE m.chat_id = pg_temp.chat('price') AND m.role = 'assistant'
    ),
    (SELECT t.cheap FROM t),
    'the partial message names the model that ran it'
);
SELECT pg_temp.start('archive');
SELECT chatd.archive_chat((SELECT t.usr FROM t), pg_temp.chat('archive'));
SELECT pg_temp.save('archive');
SELECT row_eq(
    $$SELECT * FROM pg_temp.saved('archive')$$, row('both'::text, 3000::bigint),
    'archive_chat stops a running turn: its worker may save the partial answer'
);

-- item 6: only the lease of an interrupted turn may save, once -------------------------
CREATE TEMP TABLE never AS
SELECT chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.cheap FROM t)) AS chat;
SELECT throws_ok(
    format($$SELECT chatd.save_interrupted_turn(%L, 0, '"forged"')$$, (SELECT never.chat FROM never)),
    'CD004', NULL, 'a never-claimed chat (lease 0) has no turn to save'
);
SELECT chatd.interrupt_chat((SELECT t.usr FROM t), (SELECT never.chat FROM never));
SELECT throws_ok(
    format($$SELECT chatd.save_interrupted_turn(%L, 0, '"forged"')$$, (SELECT never.chat FROM never)),
    'CD004', NULL, 'interrupting a pending chat that never ran gives no turn to save'
);
SELECT pg_temp.start('finished');
SELECT chatd.finish_turn(pg_temp.chat(
    'finished'), (
    SELECT r.lease FROM pg_temp.running AS r
    WHERE r.name = 'finished'
), '"A1"');
SELECT throws_ok(
    format(
        $$SELECT chatd.save_interrupted_turn(%L, %s, '"forged"')$$, pg_temp.chat('finished'),
        (
            SELECT c.lease FROM chatd.chats AS c
            WHERE c.id = pg_temp.chat('finished')
        )
    ),
    'CD004', NULL, 'a waiting chat after finish_turn: its current lease has no turn to save'
);
SELECT throws_ok(
    $$SELECT pg_temp.save('finished')$$,
    'CD004', NULL, 'a finished turn''s own lease cannot save a partial answer'
);
SELECT throws_ok(
    $$SELECT pg_temp.save('plain')$$,
    'CD004', NULL, 'an interrupted turn is saved at most once'
);
SELECT is(
    (
        SELECT count(*) FROM chatd.messages AS m
        WHERE m.chat_id = pg_temp.chat('plain') AND m.role = 'assistant'
    ),
    1::bigint,
    'the refused second save wrote nothing'
);
SELECT pg_temp.start('failed');
SELECT chatd.record_failure(
    pg_temp.chat(
        'failed'), (
        SELECT r.lease FROM pg_temp.running AS r
        WHERE r.name = 'failed'
    ),
    '{"message": "boom", "kind": "generic", "retryable": false}'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.save_interrupted_turn(%L, %s, '"forged"')$$, pg_temp.chat('failed'),
        (
            SELECT c.lease FROM chatd.chats AS c
            WHERE c.id = pg_temp.chat('failed')
        )
    ),
    'CD004', NULL, 'an error chat after record_failure: its current lease has no turn to save'
);
SELECT pg_temp.start('reclaimed');
SELECT chatd.interrupt_chat((SELECT t.usr FROM t), pg_temp.chat('reclaimed'));
SELECT chatd.send_message((SELECT t.usr FROM t), pg_temp.chat('reclaimed'), '"Q2"');
SELECT chatd_test.claim(pg_temp.chat('reclaimed'));
SELECT throws_ok(
    $$SELECT pg_temp.save('reclaimed')$$,
    'CD004', NULL, 'after the next claim the interrupted turn can no longer be saved'
);
SELECT is(
    (
        SELECT c.interrupted_lease FROM chatd.chats AS c
        WHERE c.id = pg_temp.chat('send')
    ), NULL::bigint,
    'a save clears the record of the interrupted turn'
);

SELECT * FROM finish();
ROLLBACK;
