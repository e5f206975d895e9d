-- The recovery budget (issue 12, item 5): only recoveries of a turn that
-- had streamed (a stream part under its lease) count toward
-- settings.max_recoveries; a turn whose workers keep dying before the model
-- answers is re-run, never failed for it.
BEGIN;
SELECT plan(6);

UPDATE chatd.settings SET max_recoveries = 1;
CREATE TEMP TABLE t AS
SELECT
    chatd_test.chat(u.usr, p_text => 'silent') AS silent,
    chatd_test.chat(u.usr, p_text => 'streamed') AS streamed
FROM (SELECT chatd_test.user(chatd_test.org()) AS usr) AS u;

-- claims the chat under the worker, optionally streams, kills the worker, recovers
CREATE FUNCTION pg_temp.killed(p_chat uuid, p_worker text, p_stream boolean) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_lease bigint := chatd_test.claim(p_chat, p_worker);
BEGIN
    IF p_stream THEN
        PERFORM chatd.publish_parts(p_chat, v_lease, 0, '[{"type": "text", "text": "partial"}]');
    END IF;
    PERFORM chatd_test.make_stale(p_worker);
    RETURN chatd.recover_stale_chats();
END
$$;

SELECT pg_temp.killed((SELECT t.silent FROM t), 'w-a', FALSE);
SELECT pg_temp.killed((SELECT t.silent FROM t), 'w-b', FALSE);
SELECT pg_temp.killed((SELECT t.silent FROM t), 'w-c', FALSE);
SELECT is(
    chatd_test.status((SELECT t.silent FROM t)), 'pending',
    'a turn recovered three times before it streamed is still pending (max_recoveries = 1)'
);
SELECT is(
    (
        SELECT c.recoveries FROM chatd.chats AS c
        WHERE c.id = (SELECT t.silent FROM t)
    ), 0,
    'recoveries before the turn streamed are not counted'
);

SELECT pg_temp.killed((SELECT t.streamed FROM t), 'w-d', TRUE);
SELECT is(chatd_test.status((SELECT t.streamed FROM t)), 'pending', 'a streamed turn''s first recovery re-runs it');
SELECT is(
    (
        SELECT c.recoveries FROM chatd.chats AS c
        WHERE c.id = (SELECT t.streamed FROM t)
    ), 1,
    'a recovery after the turn streamed is counted'
);
SELECT pg_temp.killed((SELECT t.streamed FROM t), 'w-e', FALSE);
SELECT is(
    chatd_test.status((SELECT t.streamed FROM t)), 'pending',
    'a recovery before the re-run streamed does not spend the budget'
);
SELECT pg_temp.killed((SELECT t.streamed FROM t), 'w-f', TRUE);
SELECT is(
    (
        SELECT c.last_error ->> 'kind' FROM chatd.chats AS c
        WHERE c.id = (SELECT t.streamed FROM t) AND c.status = 'error'
    ), 'timeout',
    'a streamed turn recovered more than max_recoveries times goes to error, kind timeout'
);

SELECT * FROM finish();
ROLLBACK;
