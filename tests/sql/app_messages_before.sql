-- chatd.get_messages_before: a chat's messages paged back in time, oldest
-- first within a page; hidden and deleted messages never appear; the
-- authorization of get_chat_snapshot.
BEGIN;
SELECT plan(7);

CREATE TEMP TABLE t AS
SELECT
    chatd_test.user() AS usr,
    chatd_test.user() AS other;
CREATE TEMP TABLE c AS
SELECT chatd_test.chat(t.usr) AS chat FROM t;

-- 249 more messages (250 with the first), every 10th model-only, every 25th deleted
INSERT INTO chatd.messages (chat_id, role, content, visibility, deleted)
SELECT
    c.chat AS chat_id,
    'assistant' AS role,
    jsonb_build_array(jsonb_build_object('type', 'text', 'text', 'm' || i)) AS content,
    CASE WHEN i % 10 = 0 THEN 'model' ELSE 'both' END::chatd.message_visibility AS visibility,
    i % 25 = 0 AS deleted
FROM c, generate_series(1, 249) AS i;

CREATE TEMP TABLE pages (n integer, page jsonb);
DO $$
DECLARE
    v_before bigint;
    v_page jsonb;
    v_n integer := 0;
BEGIN
    LOOP
        v_page := chatd.get_messages_before((SELECT t.usr FROM t), (SELECT c.chat FROM c), v_before, 40);
        v_n := v_n + 1;
        INSERT INTO pages VALUES (v_n, v_page);
        EXIT WHEN NOT (v_page ->> 'more')::boolean OR v_n > 20;
        v_before := (v_page ->> 'before')::bigint;
    END LOOP;
END
$$;

SELECT results_eq(
    $$SELECT (e.value ->> 'id')::bigint FROM pages AS p, jsonb_array_elements(p.page -> 'messages') AS e
      ORDER BY (e.value ->> 'id')::bigint$$,
    $$SELECT m.id FROM chatd.messages AS m WHERE m.chat_id = (SELECT c.chat FROM c)
      AND NOT m.deleted AND m.visibility <> 'model' ORDER BY m.id$$,
    'paging back gives every visible message exactly once'
);
SELECT is(
    (SELECT count(*)::integer FROM pages),
    (
        SELECT ceil(count(*) / 40.0)::integer FROM chatd.messages AS m
        WHERE m.chat_id = (SELECT c.chat FROM c) AND NOT m.deleted AND m.visibility <> 'model'
    ),
    'as many pages as the visible messages need, and no more'
);
SELECT ok(
    (
        SELECT
            bool_and(
                (
                    SELECT array_agg((e.value ->> 'id')::bigint ORDER BY e.ordinality)
                    FROM jsonb_array_elements(p.page -> 'messages') WITH ORDINALITY AS e
                )
                = (
                    SELECT array_agg((e.value ->> 'id')::bigint ORDER BY (e.value ->> 'id')::bigint)
                    FROM jsonb_array_elements(p.page -> 'messages') AS e
                )
            )
        FROM pages AS p
    ),
    'each page is oldest first'
);
SELECT is(
    (
        SELECT p.page -> 'before' FROM pages AS p
        ORDER BY p.n DESC LIMIT 1
    ),
    'null'::jsonb,
    'the oldest page has no cursor'
);
SELECT throws_ok(
    format('SELECT chatd.get_messages_before(%L, %L, NULL, 0)', (SELECT t.usr FROM t), (SELECT c.chat FROM c)),
    'CD007', NULL, 'a limit outside 1 to 1000 is invalid input'
);
SELECT throws_ok(
    format('SELECT chatd.get_messages_before(%L, %L)', (SELECT t.other FROM t), (SELECT c.chat FROM c)),
    'CD002', NULL, 'another user''s chat is refused'
);
SELECT throws_ok(
    format('SELECT chatd.get_messages_before(%L, %L)', (SELECT t.usr FROM t), gen_random_uuid()),
    'CD001', NULL, 'an unknown chat is not found'
);

SELECT * FROM finish();
ROLLBACK;
