-- chatd.message_cost_micros: micro-dollars from USD-per-million prices,
-- rounded up once over the exact sum; NULL when unpriced or without usage.
-- Token counts are validated in SQL (0 to 10^9 per bucket, else CD007), so
-- cost arithmetic never overflows (22003), through finish_turn either.
BEGIN;
SELECT plan(30);

SELECT has_function(
    'chatd', 'message_cost_micros', ARRAY['uuid', 'bigint', 'bigint', 'bigint', 'bigint'],
    'message_cost_micros has the fixed signature (no reasoning parameter)'
);
SELECT function_returns(
    'chatd', 'message_cost_micros', ARRAY['uuid', 'bigint', 'bigint', 'bigint', 'bigint'], 'bigint'
);
SELECT volatility_is(
    'chatd', 'message_cost_micros', ARRAY['uuid', 'bigint', 'bigint', 'bigint', 'bigint'], 'stable',
    'message_cost_micros reads prices: STABLE'
);

CREATE TEMP TABLE m AS
SELECT
    chatd_test.model_config(p_input_price => 1, p_output_price => 2) AS basic,
    chatd_test.model_config(p_input_price => 0.15, p_output_price => 0.6) AS cheap,
    chatd_test.model_config(p_input_price => 0.5, p_output_price => 0.5) AS half,
    chatd_test.model_config(p_input_price => 0.000001, p_output_price => NULL) AS tiny,
    chatd_test.model_config(
        p_input_price => 3, p_output_price => 15, p_cache_read_price => 0.3, p_cache_write_price => 3.75
    ) AS cached,
    chatd_test.model_config(p_input_price => NULL, p_output_price => NULL) AS unpriced,
    chatd_test.model_config(p_input_price => 0, p_output_price => 0) AS free;

SELECT is(
    chatd.message_cost_micros((SELECT basic FROM m), 1000, 500, NULL, NULL), 2000::bigint,
    '1000 input at $1/M + 500 output at $2/M = 2000 micro-dollars'
);
SELECT is(
    chatd.message_cost_micros((SELECT cheap FROM m), 1, NULL, NULL, NULL), 1::bigint,
    'a fraction of a micro-dollar (0.15) rounds up to 1'
);
SELECT is(
    chatd.message_cost_micros((SELECT cheap FROM m), 3, 1, NULL, NULL), 2::bigint,
    '0.45 + 0.6 = 1.05 rounds up to 2'
);
SELECT is(
    chatd.message_cost_micros((SELECT half FROM m), 1, 1, NULL, NULL), 1::bigint,
    'rounded once over the exact sum (0.5 + 0.5 = 1), not per bucket (which would give 2)'
);
SELECT is(
    chatd.message_cost_micros((SELECT tiny FROM m), 1, NULL, NULL, NULL), 1::bigint,
    'the smallest price (0.000001 $/M) on one token still costs 1 micro-dollar'
);
SELECT is(
    chatd.message_cost_micros((SELECT cheap FROM m), 20, 0, NULL, NULL), 3::bigint,
    'an exact integer sum is not rounded up further (20 x 0.15 = 3)'
);
SELECT is(
    chatd.message_cost_micros((SELECT cached FROM m), 1000, 200, 10000, 2000), 16500::bigint,
    'all four buckets: 3000 + 3000 + 3000 + 7500'
);
SELECT is(
    chatd.message_cost_micros((SELECT basic FROM m), 1000, 500, 7000, 9000), 2000::bigint,
    'a bucket whose own price is NULL on a partially priced model costs 0'
);
SELECT is(
    chatd.message_cost_micros((SELECT basic FROM m), NULL, 10, NULL, NULL), 20::bigint,
    'a NULL token count is no tokens'
);
SELECT is(
    chatd.message_cost_micros((SELECT basic FROM m), 0, 0, 0, 0), 0::bigint,
    'zero usage on a priced model costs 0, not NULL'
);
SELECT is(
    chatd.message_cost_micros((SELECT free FROM m), 1000, 1000, NULL, NULL), 0::bigint,
    'a model priced at 0 is priced: cost 0'
);
SELECT is(
    chatd.message_cost_micros((SELECT unpriced FROM m), 1000, 500, NULL, NULL), NULL::bigint,
    'a model without any price: NULL (unpriced)'
);
SELECT is(
    chatd.message_cost_micros((SELECT basic FROM m), NULL, NULL, NULL, NULL), NULL::bigint,
    'no usage at all (every count NULL): NULL'
);
SELECT is(
    chatd.message_cost_micros(gen_random_uuid(), 10, 10, NULL, NULL), NULL::bigint,
    'an unknown model config: NULL'
);
SELECT is(
    chatd.message_cost_micros(NULL, 10, 10, NULL, NULL), NULL::bigint,
    'no model config: NULL'
);
SELECT is(
    chatd.message_cost_micros((SELECT cached FROM m), 0, 1000000000, NULL, NULL), 15000000000::bigint,
    'a billion output tokens at $15/M = $15000 without overflow'
);

-- Reasoning tokens are part of the output and are not billed again.
CREATE TEMP TABLE r AS
SELECT chatd_test.usage_message(
    chatd_test.chat(chatd_test.user(), p_model => (SELECT basic FROM m)),
    p_input_tokens => 100, p_output_tokens => 100, p_reasoning_tokens => 80
) AS id;
SELECT is(
    (SELECT msg.total_cost_micros FROM chatd.messages AS msg INNER JOIN r ON msg.id = r.id),
    300::bigint,
    'reasoning tokens inside the output are billed once: 100 x 1 + 100 x 2'
);

-- Caps: every bucket in [0, 10^9]; the largest price and the largest counts
-- still fit a bigint.
CREATE TEMP TABLE dear AS
SELECT chatd_test.model_config(
    p_input_price => 99999999.999999, p_output_price => 99999999.999999,
    p_cache_read_price => 99999999.999999, p_cache_write_price => 99999999.999999
) AS model;
SELECT is(
    chatd.message_cost_micros((SELECT model FROM dear), 1000000000, 1000000000, 1000000000, 1000000000),
    399999999999996000::bigint,
    'the cap in every bucket at the largest storable price costs 4 x 10^17 - 4000 micros, no overflow'
);
SELECT throws_ok(
    $$SELECT chatd.message_cost_micros((SELECT model FROM dear), 1000000001, NULL, NULL, NULL)$$,
    'CD007', NULL,
    'a bucket above 10^9 tokens is refused with CD007'
);
SELECT throws_ok(
    $$SELECT chatd.message_cost_micros((SELECT model FROM dear), 9000000000000000000, 1, 1, 1)$$,
    'CD007', NULL,
    'a count that overflowed the cost (22003) is refused with CD007'
);
SELECT throws_ok(
    $$SELECT chatd.message_cost_micros((SELECT basic FROM m), -1, NULL, NULL, NULL)$$,
    'CD007', NULL,
    'a negative count is refused with CD007'
);

-- The same caps at the boundary a worker calls: finish_turn.
CREATE TEMP TABLE f AS
SELECT
    x.chat,
    chatd_test.claim(x.chat) AS lease
FROM (SELECT chatd_test.chat(chatd_test.user(), p_model => (SELECT model FROM dear)) AS chat) AS x;
SELECT throws_like(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '"x"', '{"input_tokens": 9000000000000000000}')$$,
        (SELECT chat FROM f), (SELECT lease FROM f)
    ),
    '%token count of 9000000000000000000 is above the cap of 1000000000 tokens per bucket%',
    'finish_turn: a huge token count is CD007 naming the cap, not 22003'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '"x"', '{"cache_write_tokens": 1000000001}')$$,
        (SELECT chat FROM f), (SELECT lease FROM f)
    ),
    'CD007', NULL,
    'finish_turn: one token above the cap in any bucket is CD007'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '"x"', '{"output_tokens": 1e30}')$$,
        (SELECT chat FROM f), (SELECT lease FROM f)
    ),
    'CD007', NULL,
    'finish_turn: a count beyond bigint is CD007'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '"x"', '{"output_tokens": -5}')$$,
        (SELECT chat FROM f), (SELECT lease FROM f)
    ),
    'CD007', NULL,
    'finish_turn: a negative count is CD007'
);
SELECT is(
    chatd_test.status((SELECT chat FROM f))::text, 'running',
    'the refused finishes changed nothing: the turn still runs'
);
CREATE TEMP TABLE capped AS
SELECT chatd.finish_turn(
    (SELECT chat FROM f), (SELECT lease FROM f), '"x"',
    '{"input_tokens": 1000000000, "output_tokens": 1000000000, "cache_read_tokens": 1000000000,'
    ' "cache_write_tokens": 1000000000}'
) AS id;
SELECT is(
    (SELECT msg.total_cost_micros FROM chatd.messages AS msg INNER JOIN capped ON msg.id = capped.id),
    399999999999996000::bigint,
    'finish_turn accepts the cap in every bucket and records its cost'
);

SELECT * FROM finish();
ROLLBACK;
