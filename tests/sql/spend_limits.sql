-- chatd.resolve_spend_limit: disabled > user override > smallest group limit
-- in the organization (every organization when none is given) > default.
BEGIN;
SELECT plan(17);

SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => 100000000);

CREATE TEMP TABLE t AS
SELECT
    chatd_test.org() AS org_a,
    chatd_test.org() AS org_b,
    chatd_test.org() AS org_c,
    chatd_test.user() AS u,
    chatd_test.user(p_limit_micros => 50000000) AS overrider,
    chatd_test.user() AS loner;

-- u: in org A groups of $5, $20 and one without a limit; in org B a $8
-- group; in org C only a group without a limit.
SELECT chatd_test.grp(t.org_a, 5000000, ARRAY[t.u, t.overrider]) FROM t;
SELECT chatd_test.grp(t.org_a, 20000000, ARRAY[t.u]) FROM t;
SELECT chatd_test.grp(t.org_a, NULL, ARRAY[t.u]) FROM t;
SELECT chatd_test.grp(t.org_b, 8000000, ARRAY[t.u, t.overrider]) FROM t;
SELECT chatd_test.grp(t.org_c, NULL, ARRAY[t.u]) FROM t;
-- a $1 group in org B that u is not in
SELECT chatd_test.grp(t.org_b, 1000000, ARRAY[t.loner]) FROM t;

SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT u FROM t), (SELECT org_a FROM t))$$,
    $$VALUES (5000000::bigint, 'group'::text)$$,
    'org A: $5 and $20 groups give the smallest, $5 (a group without a limit does not count)'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT u FROM t), (SELECT org_b FROM t))$$,
    $$VALUES (8000000::bigint, 'group'::text)$$,
    'org B gets its own group limit ($8), not org A''s nor a group the user is not in'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT u FROM t), (SELECT org_c FROM t))$$,
    $$VALUES (100000000::bigint, 'default'::text)$$,
    'org C: only a group without a limit, so the default'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT u FROM t), gen_random_uuid())$$,
    $$VALUES (100000000::bigint, 'default'::text)$$,
    'an unknown organization gets the default'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT u FROM t), NULL)$$,
    $$VALUES (5000000::bigint, 'group'::text)$$,
    'no organization: the smallest group limit across all organizations'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT u FROM t))$$,
    $$VALUES (5000000::bigint, 'group'::text)$$,
    'the organization defaults to NULL'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT overrider FROM t), (SELECT org_a FROM t))$$,
    $$VALUES (50000000::bigint, 'user'::text)$$,
    'a user override beats groups, even a larger override than a $5 group'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT overrider FROM t), NULL)$$,
    $$VALUES (50000000::bigint, 'user'::text)$$,
    'the override applies without an organization too'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT loner FROM t), (SELECT org_a FROM t))$$,
    $$VALUES (100000000::bigint, 'default'::text)$$,
    'a user with no group in the organization gets the default'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit(gen_random_uuid(), NULL)$$,
    $$VALUES (100000000::bigint, 'default'::text)$$,
    'an unknown user gets the default'
);

UPDATE chatd.users SET chat_spend_limit_micros = 0
WHERE id = (SELECT loner FROM t);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT loner FROM t), (SELECT org_b FROM t))$$,
    $$VALUES (0::bigint, 'user'::text)$$,
    'a zero override is an override (no spending at all), not "no override"'
);

SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => NULL);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT u FROM t), (SELECT org_c FROM t))$$,
    $$VALUES (NULL::bigint, 'default'::text)$$,
    'a NULL default: no limit, source default'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT u FROM t), (SELECT org_a FROM t))$$,
    $$VALUES (5000000::bigint, 'group'::text)$$,
    'groups still apply with a NULL default'
);

SELECT chatd_test.spend_config(p_enabled => FALSE, p_default_limit_micros => 100000000);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT u FROM t), (SELECT org_a FROM t))$$,
    $$VALUES (NULL::bigint, 'disabled'::text)$$,
    'a disabled config: no limit, source disabled, whatever the groups'
);
SELECT results_eq(
    $$SELECT limit_micros, source FROM chatd.resolve_spend_limit((SELECT overrider FROM t), NULL)$$,
    $$VALUES (NULL::bigint, 'disabled'::text)$$,
    'a disabled config beats the user override'
);

SELECT has_function(
    'chatd', 'resolve_spend_limit', ARRAY['uuid', 'uuid'], 'resolve_spend_limit(uuid, uuid) exists'
);
SELECT volatility_is('chatd', 'resolve_spend_limit', ARRAY['uuid', 'uuid'], 'stable');

SELECT * FROM finish();
ROLLBACK;
