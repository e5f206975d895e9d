-- chatd.usage_limit_status and admission scope: spend is summed over the
-- organization when the group tier decided, over every organization when
-- the user or default tier decided.
BEGIN;
-- the ledger trigger is deferred to commit; this file reads the ledger
-- inside its one transaction, so the trigger fires at once here
SET CONSTRAINTS chatd.messages_spend_ledger IMMEDIATE;
SELECT plan(21);

SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => 10000000, p_period => 'month');

CREATE TEMP TABLE t AS
SELECT
    chatd_test.org() AS org_a,
    chatd_test.org() AS org_b,
    chatd_test.user() AS grouped,
    chatd_test.user(p_limit_micros => 10000000) AS overrider,
    chatd_test.user() AS defaulted,
    chatd_test.user() AS other;

SELECT chatd_test.grp(t.org_a, 5000000, ARRAY[t.grouped]) FROM t;
SELECT chatd_test.grp(t.org_b, 20000000, ARRAY[t.grouped]) FROM t;
SELECT chatd_test.member(t.org_a, t.overrider) FROM t;
SELECT chatd_test.member(t.org_b, t.overrider) FROM t;
SELECT chatd_test.member(t.org_a, t.defaulted) FROM t;
SELECT chatd_test.member(t.org_b, t.defaulted) FROM t;
SELECT chatd_test.member(t.org_a, t.other) FROM t;

CREATE TEMP TABLE c AS
SELECT
    chatd_test.chat(t.grouped, t.org_a) AS grouped_a,
    chatd_test.chat(t.grouped, t.org_b) AS grouped_b,
    chatd_test.chat(t.overrider, t.org_a) AS overrider_a,
    chatd_test.chat(t.overrider, t.org_b) AS overrider_b,
    chatd_test.chat(t.defaulted, t.org_a) AS defaulted_a,
    chatd_test.chat(t.defaulted, t.org_b) AS defaulted_b,
    chatd_test.chat(t.other, t.org_a) AS other_a
FROM t;

-- grouped: $4 in A (under $5), $3 in B; last month's $100 never counts.
SELECT chatd_test.spend(c.grouped_a, 4000000) FROM c;
SELECT chatd_test.spend(c.grouped_a, 100000000, now() - interval '1 month') FROM c;
SELECT chatd_test.spend(c.grouped_b, 3000000) FROM c;
-- overrider ($10 override): $6 in A + $6 in B = $12
SELECT chatd_test.spend(c.overrider_a, 6000000) FROM c;
SELECT chatd_test.spend(c.overrider_b, 6000000) FROM c;
-- defaulted ($10 default): $6 in A + $5 in B = $11, $1 of it soft-deleted
SELECT chatd_test.spend(c.defaulted_a, 6000000) FROM c;
SELECT chatd_test.spend(c.defaulted_b, 4000000) FROM c;
SELECT chatd_test.spend(c.defaulted_b, 1000000, p_deleted => TRUE) FROM c;
-- someone else's spend in org A never counts for anyone else
SELECT chatd_test.spend(c.other_a, 90000000) FROM c;

SELECT results_eq(
    $$SELECT limit_micros, source, spent_micros
      FROM chatd.usage_limit_status((SELECT grouped FROM t), (SELECT org_a FROM t))$$,
    $$VALUES (5000000::bigint, 'group'::text, 4000000::bigint)$$,
    'group tier in org A: the limit and spend of org A only ($4 of $5)'
);
SELECT results_eq(
    $$SELECT limit_micros, source, spent_micros
      FROM chatd.usage_limit_status((SELECT grouped FROM t), (SELECT org_b FROM t))$$,
    $$VALUES (20000000::bigint, 'group'::text, 3000000::bigint)$$,
    'group tier in org B: org B''s own limit and spend ($3 of $20)'
);
SELECT lives_ok(
    $$SELECT chatd.admit_spend((SELECT grouped FROM t), (SELECT org_a FROM t))$$,
    'group tier: $4 of $5 in org A is admitted although $7 was spent over both organizations'
);
SELECT chatd_test.spend(c.grouped_b, 1500000) FROM c;
SELECT lives_ok(
    $$SELECT chatd.admit_spend((SELECT grouped FROM t), (SELECT org_a FROM t))$$,
    'spend in org B does not count against org A''s group limit'
);
SELECT chatd_test.spend(c.grouped_a, 1000000) FROM c;
SELECT throws_ok(
    $$SELECT chatd.admit_spend((SELECT grouped FROM t), (SELECT org_a FROM t))$$,
    'CD006', NULL,
    'group tier: $5 of $5 in org A is refused'
);
SELECT lives_ok(
    $$SELECT chatd.admit_spend((SELECT grouped FROM t), (SELECT org_b FROM t))$$,
    'while org B ($4.50 of $20) still admits'
);
SELECT results_eq(
    $$SELECT limit_micros, source, spent_micros
      FROM chatd.usage_limit_status((SELECT grouped FROM t), NULL)$$,
    $$VALUES (5000000::bigint, 'group'::text, 9500000::bigint)$$,
    'no organization: the smallest group limit against the spend of every organization'
);

SELECT results_eq(
    $$SELECT limit_micros, source, spent_micros
      FROM chatd.usage_limit_status((SELECT overrider FROM t), (SELECT org_a FROM t))$$,
    $$VALUES (10000000::bigint, 'user'::text, 12000000::bigint)$$,
    'user override: $12 spent across two organizations counts in org A'
);
SELECT throws_ok(
    $$SELECT chatd.admit_spend((SELECT overrider FROM t), (SELECT org_a FROM t))$$,
    'CD006', NULL,
    'user override: refused in org A ($12 of $10 across organizations)'
);
SELECT throws_ok(
    $$SELECT chatd.admit_spend((SELECT overrider FROM t), (SELECT org_b FROM t))$$,
    'CD006', NULL,
    'user override: refused in org B too; two organizations do not double the limit'
);

SELECT results_eq(
    $$SELECT limit_micros, source, spent_micros
      FROM chatd.usage_limit_status((SELECT defaulted FROM t), (SELECT org_b FROM t))$$,
    $$VALUES (10000000::bigint, 'default'::text, 11000000::bigint)$$,
    'default limit: spend is global ($6 in A + $5 in B, soft-deleted included)'
);
SELECT throws_ok(
    $$SELECT chatd.admit_spend((SELECT defaulted FROM t), (SELECT org_b FROM t))$$,
    'CD006', NULL,
    'default limit: refused in org B on global spend although org B alone is $5'
);

SELECT results_eq(
    $$SELECT period_start, resets_at FROM chatd.usage_limit_status((SELECT defaulted FROM t))$$,
    $$SELECT period_start, resets_at FROM chatd.spend_period_bounds('month', now())$$,
    'status reports the current monthly period'
);
SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => 10000000, p_period => 'day');
SELECT results_eq(
    $$SELECT period_start, resets_at FROM chatd.usage_limit_status((SELECT defaulted FROM t))$$,
    $$SELECT period_start, resets_at FROM chatd.spend_period_bounds('day', now())$$,
    'status follows the configured period (day)'
);

SELECT chatd_test.spend_config(p_enabled => FALSE, p_default_limit_micros => 10000000);
SELECT results_eq(
    $$SELECT limit_micros, source, spent_micros
      FROM chatd.usage_limit_status((SELECT overrider FROM t), (SELECT org_a FROM t))$$,
    $$VALUES (NULL::bigint, 'disabled'::text, 12000000::bigint)$$,
    'disabled: no limit, but the (global) spend is still reported'
);
SELECT is_definer('chatd', 'usage_limit_status', ARRAY['uuid', 'uuid'], 'usage_limit_status is SECURITY DEFINER');

-- The auth boundary of usage_limit_status, like every application function:
-- CD002 for a user who is not a member of the given organization, for an
-- unknown user and for no user. other is a member of A only.
SELECT throws_ok(
    $$SELECT * FROM chatd.usage_limit_status((SELECT other FROM t), (SELECT org_b FROM t))$$,
    'CD002', NULL,
    'usage_limit_status of an organization the user is not a member of: CD002'
);
SELECT throws_ok(
    $$SELECT * FROM chatd.usage_limit_status(gen_random_uuid(), (SELECT org_a FROM t))$$,
    'CD002', NULL,
    'usage_limit_status of an unknown user: CD002'
);
SELECT throws_ok(
    $$SELECT * FROM chatd.usage_limit_status(gen_random_uuid())$$,
    'CD002', NULL,
    'usage_limit_status of an unknown user without an organization: CD002'
);
SELECT throws_ok(
    $$SELECT * FROM chatd.usage_limit_status(NULL, (SELECT org_a FROM t))$$,
    'CD002', NULL,
    'usage_limit_status without a user: CD002'
);
SELECT lives_ok(
    $$SELECT * FROM chatd.usage_limit_status((SELECT other FROM t), (SELECT org_a FROM t))$$,
    'usage_limit_status of the user''s own organization is allowed'
);

SELECT * FROM finish();
ROLLBACK;
