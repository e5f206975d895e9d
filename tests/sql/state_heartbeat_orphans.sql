-- The heartbeat's safety net (issue 12, item 1): a running chat of a live
-- worker that its heartbeat no longer reports, claimed longer than
-- stale_after ago, goes back to pending (lease bumped, so the worker can
-- write nothing more); reported chats, fresh claims and other workers'
-- chats are left alone.
BEGIN;
SELECT plan(9);

CREATE TEMP TABLE t AS
SELECT
    chatd_test.chat(u.usr, p_text => 'orphan') AS orphan,
    chatd_test.chat(u.usr, p_text => 'reported') AS reported,
    chatd_test.chat(u.usr, p_text => 'fresh') AS fresh,
    chatd_test.chat(u.usr, p_text => 'other') AS other
FROM (SELECT chatd_test.user(chatd_test.org()) AS usr) AS u;

CREATE TEMP TABLE l AS
SELECT
    chatd_test.claim((SELECT t.orphan FROM t), 'wo') AS orphan,
    chatd_test.claim((SELECT t.reported FROM t), 'wo') AS reported,
    chatd_test.claim((SELECT t.other FROM t), 'w-other') AS other;
-- claimed an hour ago (chats.heartbeat_at is the claim time)
UPDATE chatd.chats SET heartbeat_at = now() - interval '1 hour'
WHERE id IN (
        SELECT t.orphan FROM t
        UNION ALL
        SELECT t.reported FROM t
        UNION ALL
        SELECT t.other FROM t
    );
SELECT chatd_test.claim((SELECT t.fresh FROM t), 'wo') AS fresh_lease \gset

SELECT is_empty(
    format(
        $$SELECT * FROM chatd.heartbeat('wo', ARRAY[%L]::uuid[], ARRAY[%s]::bigint[])$$,
        (SELECT t.reported FROM t), (SELECT l.reported FROM l)
    ),
    'the heartbeat reports nothing lost among the chats it lists'
);
SELECT is(chatd_test.status((SELECT t.orphan FROM t)), 'pending', 'an unreported chat claimed long ago is released');
SELECT is(
    (
        SELECT c.lease FROM chatd.chats AS c
        WHERE c.id = (SELECT t.orphan FROM t)
    ),
    (SELECT l.orphan + 1 FROM l),
    'its lease is bumped'
);
SELECT is(
    (
        SELECT c.worker_id FROM chatd.chats AS c
        WHERE c.id = (SELECT t.orphan FROM t)
    ), NULL,
    'it has no worker any more'
);
SELECT ok(
    (
        SELECT c.next_attempt_at <= now() FROM chatd.chats AS c
        WHERE c.id = (SELECT t.orphan FROM t)
    ),
    'it is due now'
);
SELECT is(chatd_test.status((SELECT t.reported FROM t)), 'running', 'a reported chat stays running');
SELECT is(
    chatd_test.status((SELECT t.fresh FROM t)), 'running',
    'an unreported chat claimed within stale_after stays running (a claim racing the heartbeat)'
);
SELECT is(chatd_test.status((SELECT t.other FROM t)), 'running', 'another worker''s chats are left alone');
SELECT throws_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '[{"type": "text", "text": "late"}]', '{}')$$,
        (SELECT t.orphan FROM t), (SELECT l.orphan FROM l)
    ),
    'CD004', NULL, 'the worker that lost it can write no result'
);

SELECT * FROM finish();
ROLLBACK;
