-- chatd.admit_spend: refuses with CD006 and a JSON DETAIL when spent >=
-- limit. Its per-user lock (a row lock on chatd.users, taken only when
-- limits are enabled) is observed from other connections in
-- tests/python/test_spend_race.py.
BEGIN;
-- the ledger trigger is deferred to commit; this file reads the ledger
-- inside its one transaction, so the trigger fires at once here
SET CONSTRAINTS chatd.messages_spend_ledger IMMEDIATE;
SELECT plan(19);

-- The DETAIL of the admission error, parsed as jsonb (the cast fails on
-- anything that is not JSON); NULL when admitted.
CREATE FUNCTION pg_temp.admission_detail(p_user uuid, p_org uuid) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_detail text;
BEGIN
    PERFORM chatd.admit_spend(p_user, p_org);
    RETURN NULL;
EXCEPTION WHEN SQLSTATE 'CD006' THEN
    GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
    RETURN v_detail::jsonb;
END
$$;

SELECT has_function('chatd', 'admit_spend', ARRAY['uuid', 'uuid'], 'admit_spend(uuid, uuid) exists');
SELECT function_returns('chatd', 'admit_spend', ARRAY['uuid', 'uuid'], 'void');
SELECT is_definer('chatd', 'admit_spend', ARRAY['uuid', 'uuid'], 'admit_spend is SECURITY DEFINER');
SELECT ok(
    (
        SELECT proconfig @> ARRAY['search_path=pg_catalog, chatd, pg_temp']
        FROM pg_proc
        WHERE oid = 'chatd.admit_spend(uuid, uuid)'::regprocedure
    ),
    'admit_spend pins its search_path'
);

CREATE TEMP TABLE t AS
SELECT
    chatd_test.org() AS org,
    chatd_test.user() AS u,
    chatd_test.user() AS free_user,
    chatd_test.user(p_limit_micros => 0) AS zero;
SELECT chatd_test.member(t.org, t.u) FROM t;
SELECT chatd_test.member(t.org, t.free_user) FROM t;
CREATE TEMP TABLE c AS
SELECT chatd_test.chat(t.u, t.org) AS chat FROM t;
SELECT chatd_test.spend(c.chat, 2999999) FROM c;

-- Disabled (the shipped configuration): everything is admitted, no lock.
SELECT chatd_test.spend_config(p_enabled => FALSE, p_default_limit_micros => 0);
SELECT lives_ok(
    $$SELECT chatd.admit_spend((SELECT t.u FROM t), (SELECT org FROM t))$$,
    'disabled config admits everything, even over a zero default'
);

SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => 3000000);
SELECT lives_ok(
    $$SELECT chatd.admit_spend((SELECT t.u FROM t), (SELECT org FROM t))$$,
    'under the limit (2999999 of 3000000) is admitted'
);

SELECT chatd_test.spend(c.chat, 1) FROM c;
SELECT throws_ok(
    $$SELECT chatd.admit_spend((SELECT t.u FROM t), (SELECT org FROM t))$$,
    'CD006',
    'chat spend limit reached: 3000000 of 3000000 micro-dollars spent this period',
    'at the limit (spent = limit) is refused with SQLSTATE CD006'
);

CREATE TEMP TABLE d AS
SELECT pg_temp.admission_detail(t.u, t.org) AS detail FROM t;
SELECT is(
    (SELECT array_agg(k ORDER BY k) FROM d, jsonb_object_keys(d.detail) AS k),
    ARRAY['kind', 'limit_micros', 'resets_at', 'spent_micros'],
    'DETAIL parses as a JSON object with exactly the four fields'
);
SELECT is((SELECT detail ->> 'kind' FROM d), 'usage_limit', 'kind is usage_limit');
SELECT is((SELECT detail -> 'spent_micros' FROM d), '3000000'::jsonb, 'spent_micros is the number spent');
SELECT is((SELECT detail -> 'limit_micros' FROM d), '3000000'::jsonb, 'limit_micros is the number limit');
SELECT matches(
    (SELECT detail ->> 'resets_at' FROM d),
    '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$',
    'resets_at is an ISO-8601 UTC timestamp'
);
SELECT is(
    (SELECT (detail ->> 'resets_at')::timestamptz FROM d),
    (SELECT resets_at FROM chatd.spend_period_bounds('month', now())),
    'resets_at is the end of the current (monthly) period'
);

SELECT chatd_test.spend(c.chat, 5000000) FROM c;
SELECT is(
    (SELECT pg_temp.admission_detail(t.u, t.org) -> 'spent_micros' FROM t),
    '8000000'::jsonb,
    'over the limit is refused too, reporting the full spend'
);
SELECT throws_ok(
    $$SELECT chatd.admit_spend((SELECT zero FROM t), (SELECT org FROM t))$$,
    'CD006', NULL,
    'a zero limit refuses even with nothing spent'
);
SELECT lives_ok(
    $$SELECT chatd.admit_spend((SELECT free_user FROM t), NULL)$$,
    'another user with nothing spent is admitted (NULL organization)'
);

SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => NULL);
SELECT lives_ok(
    $$SELECT chatd.admit_spend((SELECT t.u FROM t), (SELECT org FROM t))$$,
    'a NULL default is no limit: admitted whatever the spend'
);

SELECT chatd_test.spend_config(p_enabled => FALSE, p_default_limit_micros => 0);
SELECT lives_ok(
    $$SELECT chatd.admit_spend((SELECT zero FROM t), (SELECT org FROM t))$$,
    'disabled config admits even a zero user override'
);

SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => 3000000);
SELECT is(
    (SELECT pg_temp.admission_detail(t.u, gen_random_uuid()) ->> 'kind' FROM t),
    'usage_limit',
    'an unknown organization falls back to the default limit and global spend'
);

SELECT * FROM finish();
ROLLBACK;
