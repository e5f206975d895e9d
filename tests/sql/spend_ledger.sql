-- The spend ledger (migration 0014, sql/52_spend_ledger.sql): its triggers
-- keep chatd.spend_ledger equal to the sum over priced messages per (owner,
-- UTC day, organization); rebuild_spend_ledger recomputes it; admission and
-- usage_limit_status read it.
BEGIN;
-- the ledger trigger is deferred to commit; this file reads the ledger
-- inside its one transaction, so the trigger fires at once here
SET CONSTRAINTS chatd.messages_spend_ledger IMMEDIATE;
SELECT plan(16);

SELECT chatd_test.spend_config(p_enabled => TRUE, p_period => 'month');

CREATE TEMP TABLE t AS
SELECT
    chatd_test.org('acme') AS org_a,
    chatd_test.org('globex') AS org_b,
    chatd_test.user(p_name => 'ann') AS ann,
    chatd_test.user(p_name => 'bob') AS bob;
SELECT chatd_test.member(t.org_b, t.ann) FROM t;
CREATE TEMP TABLE c AS
SELECT
    chatd_test.chat(t.ann, t.org_a) AS ann_a,
    chatd_test.chat(t.ann, t.org_b) AS ann_b,
    chatd_test.chat(t.bob, t.org_a) AS bob_a
FROM t;

-- The ledger's non-empty rows, and what they must be: the sums over the
-- priced messages.
CREATE TEMP VIEW ledger AS
SELECT
    l.user_id,
    l.day,
    l.organization_id,
    l.spent_micros,
    l.priced_messages
FROM chatd.spend_ledger AS l
WHERE l.priced_messages <> 0 OR l.spent_micros <> 0;
CREATE TEMP VIEW expected AS
SELECT
    ch.owner_id AS user_id,
    (m.created_at AT TIME ZONE 'UTC')::date AS day,
    ch.organization_id,
    sum(m.total_cost_micros) AS spent_micros,
    count(*) AS priced_messages
FROM chatd.messages AS m
INNER JOIN chatd.chats AS ch ON m.chat_id = ch.id
WHERE m.total_cost_micros IS NOT NULL
GROUP BY 1, 2, 3;

SELECT chatd_test.spend(c.ann_a, 100) FROM c;
SELECT chatd_test.spend(c.ann_a, 200) FROM c;
SELECT chatd_test.spend(c.ann_b, 40) FROM c;
SELECT chatd_test.spend(c.bob_a, 7, now() - interval '1 day') FROM c;
SELECT chatd_test.spend(c.ann_a, NULL) FROM c;
SELECT set_eq(
    'SELECT * FROM ledger', 'SELECT * FROM expected',
    'inserted messages: one ledger row per owner, UTC day and organization, summing the priced ones'
);
SELECT is(
    (
        SELECT l.spent_micros FROM ledger AS l, t
        WHERE l.user_id = t.ann AND l.organization_id = t.org_a
    ),
    300::numeric,
    'two messages of a user on one day share one ledger row'
);

UPDATE chatd.messages SET deleted = TRUE
WHERE chat_id = (SELECT c.ann_a FROM c);
SELECT is(
    (
        SELECT l.spent_micros FROM ledger AS l, t
        WHERE l.user_id = t.ann AND l.organization_id = t.org_a
    ),
    300::numeric,
    'a soft delete keeps its cost in the ledger'
);

UPDATE chatd.messages SET total_cost_micros = 250
WHERE total_cost_micros = 200;
SELECT set_eq('SELECT * FROM ledger', 'SELECT * FROM expected', 'a changed cost moves the difference');

UPDATE chatd.messages SET total_cost_micros = 5
WHERE total_cost_micros IS NULL;
UPDATE chatd.messages SET total_cost_micros = NULL
WHERE total_cost_micros = 40;
SELECT set_eq(
    'SELECT * FROM ledger', 'SELECT * FROM expected',
    'a cost set on an unpriced message adds it; a cost set to NULL removes it'
);

UPDATE chatd.messages SET created_at = created_at - interval '3 days'
WHERE total_cost_micros = 100;
SELECT set_eq('SELECT * FROM ledger', 'SELECT * FROM expected', 'a message moved to another day moves its spend');

DELETE FROM chatd.messages
WHERE total_cost_micros = 250;
SELECT set_eq('SELECT * FROM ledger', 'SELECT * FROM expected', 'a hard-deleted message subtracts its cost');

DELETE FROM chatd.chats
WHERE id = (SELECT c.bob_a FROM c);
SELECT set_eq('SELECT * FROM ledger', 'SELECT * FROM expected', 'a hard-deleted chat subtracts its messages');
SELECT is_empty(
    'SELECT 1 FROM ledger AS l, t WHERE l.user_id = t.bob',
    'nothing is left of the deleted chat''s owner'
);

-- Writes that bypass the trigger (a bulk load, a restore) are invisible to
-- admission until rebuild_spend_ledger: admission reads the ledger. (The
-- message notifications are deferred to commit too: fired now, so the ALTER
-- TABLE finds no pending trigger events.)
SET CONSTRAINTS chatd.messages_notify IMMEDIATE;
ALTER TABLE chatd.messages DISABLE TRIGGER messages_spend_ledger;
SELECT chatd_test.spend(c.ann_a, 1000000) FROM c;
SELECT chatd_test.spend(c.ann_b, 9, now() - interval '40 days') FROM c;
ALTER TABLE chatd.messages ENABLE TRIGGER messages_spend_ledger;
UPDATE chatd.users SET chat_spend_limit_micros = 1000
WHERE id = (SELECT t.ann FROM t);
SELECT lives_ok(
    format('SELECT chatd.admit_spend(%L, %L)', (SELECT t.ann FROM t), (SELECT t.org_a FROM t)),
    'admission reads the ledger: a message written without the trigger is not counted'
);

SELECT is(
    chatd.rebuild_spend_ledger(current_date - 10, NULL),
    (
        SELECT count(*) FROM expected
        WHERE day >= current_date - 10
    ),
    'rebuild_spend_ledger of a day range returns the ledger rows it wrote'
);
SELECT isnt_empty(
    $$SELECT * FROM expected EXCEPT SELECT * FROM ledger$$,
    'a rebuild of a day range leaves the other days as they were'
);
SELECT chatd.rebuild_spend_ledger();
SELECT set_eq('SELECT * FROM ledger', 'SELECT * FROM expected', 'a full rebuild makes the ledger exact');
SELECT throws_ok(
    format('SELECT chatd.admit_spend(%L, %L)', (SELECT t.ann FROM t), (SELECT t.org_a FROM t)),
    'CD006', NULL,
    'after the rebuild the bulk-loaded spend counts against the limit'
);

SELECT throws_ok(
    $$SELECT chatd.rebuild_spend_ledger('2026-02-01', '2026-01-01')$$,
    'CD007', NULL,
    'rebuild_spend_ledger refuses an empty day range'
);

-- spend_in_period: midnight bounds read the ledger, other bounds scan; both agree.
SELECT is(
    chatd.spend_in_period(
        (SELECT t.ann FROM t), date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
        date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day'
    ),
    chatd.spend_in_period(
        (SELECT t.ann FROM t), date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '1 microsecond',
        date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 day'
    ),
    'spend_in_period over a UTC day (ledger) equals the same range read from the messages'
);

SELECT * FROM finish();
ROLLBACK;
