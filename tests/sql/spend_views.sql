-- Spend reporting views over the current period, and the functions'
-- hygiene: plpgsql_check clean, volatility, SECURITY DEFINER.
BEGIN;
-- the ledger trigger is deferred to commit; this file reads the ledger
-- inside its one transaction, so the trigger fires at once here
SET CONSTRAINTS chatd.messages_spend_ledger IMMEDIATE;
SELECT plan(16);

SELECT chatd_test.spend_config(p_enabled => FALSE, p_period => 'month');

SELECT has_view('chatd', 'spend_by_organization', 'spend_by_organization exists');
SELECT has_view('chatd', 'spend_by_user', 'spend_by_user exists');
SELECT has_view('chatd', 'spend_by_model', 'spend_by_model exists');
SELECT has_view('chatd', 'models_without_prices', 'models_without_prices exists');

CREATE TEMP TABLE t AS
SELECT
    chatd_test.org('acme') AS org_a,
    chatd_test.org('globex') AS org_b,
    chatd_test.org('idle') AS org_idle,
    chatd_test.user(p_name => 'ann') AS ann,
    chatd_test.user(p_name => 'bob', p_limit_micros => 7000000) AS bob,
    chatd_test.model_config(p_input_price => 1, p_output_price => 2, p_model => 'priced') AS priced,
    chatd_test.model_config(p_input_price => NULL, p_output_price => NULL, p_model => 'free-for-all') AS unpriced;
SELECT chatd_test.grp(t.org_a, 5000000, ARRAY[t.ann]) FROM t;
SELECT chatd_test.member(t.org_b, t.ann) FROM t;
SELECT chatd_test.member(t.org_a, t.bob) FROM t;

CREATE TEMP TABLE c AS
SELECT
    chatd_test.chat(t.ann, t.org_a, t.priced) AS ann_a,
    chatd_test.chat(t.ann, t.org_b, t.unpriced) AS ann_b,
    chatd_test.chat(t.bob, t.org_a, t.priced) AS bob_a
FROM t;

-- This period: ann 1000 in + 500 out (2000) in A, unpriced usage in B;
-- bob 300 in A. Last period's 1000000 never shows.
SELECT chatd_test.usage_message(c.ann_a, p_input_tokens => 1000, p_output_tokens => 500) FROM c;
SELECT chatd_test.usage_message(c.ann_b, p_input_tokens => 10, p_output_tokens => 20) FROM c;
SELECT chatd_test.usage_message(c.bob_a, p_input_tokens => 100, p_output_tokens => 100, p_reasoning_tokens => 40)
FROM c;
SELECT
    chatd_test.usage_message(
        c.bob_a, p_input_tokens => 1000000, p_created_at => (SELECT p.period_start FROM chatd.spend_current_period AS p) - interval '1 microsecond'
    )
FROM c;

SELECT results_eq(
    $$SELECT organization_name, spent_micros, users, priced_messages
      FROM chatd.spend_by_organization ORDER BY organization_name$$,
    $$VALUES ('acme'::text, 2300::bigint, 2::bigint, 2::bigint),
             ('globex', 0, 0, 0),
             ('idle', 0, 0, 0)$$,
    'spend_by_organization: every organization, this period only, unpriced adds nothing'
);
SELECT results_eq(
    $$SELECT DISTINCT period_start, resets_at FROM chatd.spend_by_organization$$,
    $$SELECT * FROM chatd.spend_period_bounds('month', now())$$,
    'spend_by_organization reports the configured (monthly) period'
);
SELECT results_eq(
    $$SELECT username, spent_micros, priced_messages, organizations, limit_micros, limit_source
      FROM chatd.spend_by_user ORDER BY username$$,
    $$VALUES ('ann'::text, 2000::bigint, 1::bigint, 1::bigint, NULL::bigint, 'disabled'::text),
             ('bob', 300, 1, 1, NULL, 'disabled')$$,
    'spend_by_user: users who spent this period; limits disabled'
);
SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => 9000000, p_period => 'month');
SELECT results_eq(
    $$SELECT username, limit_micros, limit_source FROM chatd.spend_by_user ORDER BY username$$,
    $$VALUES ('ann'::text, 5000000::bigint, 'group'::text), ('bob', 7000000, 'user')$$,
    'spend_by_user: the limit that applies without an organization, and its tier'
);
SELECT results_eq(
    $$SELECT model, spent_micros, messages, unpriced_messages,
             input_tokens, output_tokens, reasoning_tokens, cache_read_tokens, cache_write_tokens
      FROM chatd.spend_by_model ORDER BY model$$,
    $$VALUES ('free-for-all'::text, 0::bigint, 1::bigint, 1::bigint, 10::bigint, 20::bigint, 0::bigint, 0::bigint, 0::bigint),
             ('priced', 2300, 2, 0, 1100, 600, 40, 0, 0)$$,
    'spend_by_model: cost, usage and unpriced usage per model this period'
);

SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => 9000000, p_period => 'day');
SELECT results_eq(
    $$SELECT DISTINCT period_start, resets_at FROM chatd.spend_by_model$$,
    $$SELECT * FROM chatd.spend_period_bounds('day', now())$$,
    'the views follow the configured period (day)'
);

SELECT chatd_test.model_config(p_input_price => NULL, p_output_price => NULL, p_cache_read_price => 1, p_model => 'cache-only');
SELECT results_eq(
    $$SELECT model FROM chatd.models_without_prices ORDER BY model$$,
    $$VALUES ('free-for-all'::text)$$,
    'models_without_prices: enabled models with no price at all (one price is priced)'
);
UPDATE chatd.model_configs SET enabled = FALSE
WHERE model = 'free-for-all';
SELECT is_empty(
    $$SELECT model FROM chatd.models_without_prices$$,
    'a disabled unpriced model is not listed'
);

-- Hygiene of the spend functions.
SELECT is_empty(
    $$SELECT p.oid::regprocedure::text, r.message
      FROM pg_proc AS p
      CROSS JOIN LATERAL plpgsql_check_function_tb(p.oid, all_warnings => TRUE) AS r
      WHERE p.oid IN (
          'chatd.admit_spend(uuid, uuid)'::regprocedure,
          'chatd.usage_limit_status(uuid, uuid)'::regprocedure,
          'chatd.resolve_spend_limit(uuid, uuid)'::regprocedure,
          'chatd_test.spend(uuid, bigint, timestamptz, boolean)'::regprocedure
      )$$,
    'plpgsql_check (all warnings): no errors and no warnings in the spend functions'
);
SELECT volatility_is('chatd', 'admit_spend', ARRAY['uuid', 'uuid'], 'volatile');
SELECT volatility_is('chatd', 'usage_limit_status', ARRAY['uuid', 'uuid'], 'stable');
SELECT volatility_is(
    'chatd', 'spend_in_period', ARRAY['uuid', 'timestamp with time zone', 'timestamp with time zone', 'uuid'], 'stable'
);

SELECT * FROM finish();
ROLLBACK;
