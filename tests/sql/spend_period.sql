-- chatd.spend_period_bounds: UTC days, ISO weeks (Monday), calendar months;
-- the last microsecond of a period and the first of the next; and
-- chatd.spend_in_period's half-open range [start, end).
BEGIN;
-- the ledger trigger is deferred to commit; this file reads the ledger
-- inside its one transaction, so the trigger fires at once here
SET CONSTRAINTS chatd.messages_spend_ledger IMMEDIATE;
SELECT plan(20);

-- The session time zone must not matter: UTC+14.
SET LOCAL timezone = 'Pacific/Kiritimati';

SELECT results_eq(
    $$SELECT * FROM chatd.spend_period_bounds('day', '2024-02-28 23:59:59.999999+00')$$,
    $$VALUES ('2024-02-28 00:00:00+00'::timestamptz, '2024-02-29 00:00:00+00'::timestamptz)$$,
    'day: the last microsecond of Feb 28 belongs to Feb 28'
);
SELECT results_eq(
    $$SELECT * FROM chatd.spend_period_bounds('day', '2024-02-29 00:00:00+00')$$,
    $$VALUES ('2024-02-29 00:00:00+00'::timestamptz, '2024-03-01 00:00:00+00'::timestamptz)$$,
    'day: the first microsecond of Feb 29 starts the next day (leap day)'
);
SELECT results_eq(
    $$SELECT * FROM chatd.spend_period_bounds('week', '2024-03-03 23:59:59.999999+00')$$,
    $$VALUES ('2024-02-26 00:00:00+00'::timestamptz, '2024-03-04 00:00:00+00'::timestamptz)$$,
    'week: the last microsecond of Sunday Mar 3 belongs to the week of Monday Feb 26'
);
SELECT results_eq(
    $$SELECT * FROM chatd.spend_period_bounds('week', '2024-03-04 00:00:00+00')$$,
    $$VALUES ('2024-03-04 00:00:00+00'::timestamptz, '2024-03-11 00:00:00+00'::timestamptz)$$,
    'week: Monday Mar 4 00:00 UTC starts the next week'
);
SELECT results_eq(
    $$SELECT * FROM chatd.spend_period_bounds('week', '2024-12-31 12:00:00+00')$$,
    $$VALUES ('2024-12-30 00:00:00+00'::timestamptz, '2025-01-06 00:00:00+00'::timestamptz)$$,
    'week: an ISO week spanning New Year'
);
SELECT results_eq(
    $$SELECT * FROM chatd.spend_period_bounds('month', '2024-02-29 23:59:59.999999+00')$$,
    $$VALUES ('2024-02-01 00:00:00+00'::timestamptz, '2024-03-01 00:00:00+00'::timestamptz)$$,
    'month: the last microsecond of February'
);
SELECT results_eq(
    $$SELECT * FROM chatd.spend_period_bounds('month', '2024-03-01 00:00:00+00')$$,
    $$VALUES ('2024-03-01 00:00:00+00'::timestamptz, '2024-04-01 00:00:00+00'::timestamptz)$$,
    'month: March 1 00:00 UTC starts March'
);
SELECT results_eq(
    $$SELECT * FROM chatd.spend_period_bounds('month', '2024-12-31 23:59:59.999999+00')$$,
    $$VALUES ('2024-12-01 00:00:00+00'::timestamptz, '2025-01-01 00:00:00+00'::timestamptz)$$,
    'month: December resets on January 1 of the next year'
);
SELECT results_eq(
    $$SELECT * FROM chatd.spend_period_bounds('day', '2024-06-01 09:00:00+14')$$,
    $$VALUES ('2024-05-31 00:00:00+00'::timestamptz, '2024-06-01 00:00:00+00'::timestamptz)$$,
    'periods are UTC: 09:00 on June 1 in UTC+14 is still May 31 in UTC'
);
SELECT results_eq(
    $$SELECT period_start, resets_at FROM chatd.spend_period_bounds('month')$$,
    $$SELECT * FROM chatd.spend_period_bounds('month', now())$$,
    'the time defaults to now()'
);
SELECT volatility_is('chatd', 'spend_period_bounds', ARRAY['chatd.spend_period', 'timestamp with time zone'], 'immutable');

-- spend_in_period over the boundaries of one day.
CREATE TEMP TABLE t AS
SELECT chatd_test.user() AS u;
CREATE TEMP TABLE c AS
SELECT chatd_test.chat(t.u) AS chat FROM t;
SELECT chatd_test.spend(c.chat, 1, '2024-02-28 23:59:59.999999+00') FROM c;
SELECT chatd_test.spend(c.chat, 10, '2024-02-29 00:00:00+00') FROM c;
SELECT chatd_test.spend(c.chat, 100, '2024-02-29 23:59:59.999999+00') FROM c;
SELECT chatd_test.spend(c.chat, 1000, '2024-03-01 00:00:00+00') FROM c;
SELECT chatd_test.spend(c.chat, 10000, '2024-02-29 12:00:00+00', p_deleted => TRUE) FROM c;
SELECT chatd_test.spend(c.chat, NULL, '2024-02-29 12:00:00+00') FROM c;

SELECT
    is(
        chatd.spend_in_period(
            (SELECT t.u FROM t), b.period_start, b.resets_at
        ),
        10110::bigint,
        'day Feb 29: its first and last microsecond count, the neighbours do not; soft-deleted counts, unpriced adds 0'
    )
FROM chatd.spend_period_bounds('day', '2024-02-29 06:00:00+00') AS b;
SELECT
    is(
        chatd.spend_in_period(
            (SELECT t.u FROM t), b.period_start, b.resets_at
        ),
        1::bigint,
        'day Feb 28 ends before Feb 29 00:00'
    )
FROM chatd.spend_period_bounds('day', '2024-02-28 23:59:59.999999+00') AS b;
SELECT
    is(
        chatd.spend_in_period(
            (SELECT t.u FROM t), b.period_start, b.resets_at
        ),
        1000::bigint,
        'day Mar 1 starts at its first microsecond'
    )
FROM chatd.spend_period_bounds('day', '2024-03-01 00:00:00+00') AS b;
SELECT
    is(
        chatd.spend_in_period(
            (SELECT t.u FROM t), b.period_start, b.resets_at
        ),
        10111::bigint,
        'month February: everything but March 1'
    )
FROM chatd.spend_period_bounds('month', '2024-02-29 23:59:59.999999+00') AS b;

-- Week boundaries: Sunday 23:59:59.999999 and Monday 00:00 UTC.
SELECT chatd_test.spend(c.chat, 2, '2024-03-03 23:59:59.999999+00') FROM c;
SELECT chatd_test.spend(c.chat, 20, '2024-03-04 00:00:00+00') FROM c;
SELECT chatd_test.spend(c.chat, 200, '2024-03-10 23:59:59.999999+00') FROM c;
SELECT chatd_test.spend(c.chat, 2000, '2024-03-11 00:00:00+00') FROM c;
SELECT
    is(
        chatd.spend_in_period((SELECT t.u FROM t), b.period_start, b.resets_at),
        220::bigint,
        'week of Monday Mar 4: Monday 00:00 and Sunday 23:59:59.999999 count, the neighbours do not'
    )
FROM chatd.spend_period_bounds('week', '2024-03-07 00:00:00+00') AS b;
SELECT
    is(
        chatd.spend_in_period((SELECT t.u FROM t), b.period_start, b.resets_at),
        1000::bigint + 1 + 10 + 100 + 10000 + 2,
        'week of Monday Feb 26 ends at Sunday Mar 3 23:59:59.999999'
    )
FROM chatd.spend_period_bounds('week', '2024-03-03 23:59:59.999999+00') AS b;

-- Month boundaries with spend: Mar 31 23:59:59.999999 and Apr 1 00:00.
SELECT chatd_test.spend(c.chat, 30000, '2024-03-31 23:59:59.999999+00') FROM c;
SELECT chatd_test.spend(c.chat, 300000, '2024-04-01 00:00:00+00') FROM c;
SELECT
    is(
        chatd.spend_in_period((SELECT t.u FROM t), b.period_start, b.resets_at),
        1000::bigint + 2 + 20 + 200 + 2000 + 30000,
        'month March: March 1 00:00 to March 31 23:59:59.999999'
    )
FROM chatd.spend_period_bounds('month', '2024-03-31 23:59:59.999999+00') AS b;
SELECT
    is(
        chatd.spend_in_period((SELECT t.u FROM t), b.period_start, b.resets_at),
        300000::bigint,
        'month April starts at April 1 00:00'
    )
FROM chatd.spend_period_bounds('month', '2024-04-01 00:00:00+00') AS b;

SELECT is(
    chatd.spend_in_period(chatd_test.user(), '-infinity', 'infinity'),
    0::bigint,
    'a user without chats spent 0, not NULL'
);

SELECT * FROM finish();
ROLLBACK;
