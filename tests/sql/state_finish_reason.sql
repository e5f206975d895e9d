-- finish_turn's finish reason (migration 0008, issue 19): stored per step,
-- an empty finished step keeps its usage and cost, a content_filter stop
-- errors the chat (content_filter, not retryable) after storing the step,
-- estimated usage is flagged; admin_upsert_provider's auth header and
-- stream usage settings reach the worker's model payload.
BEGIN;
SELECT plan(14);

CREATE TEMP TABLE t AS
SELECT
    u.usr,
    chatd_test.model_config(p_input_price => 1, p_output_price => 2) AS model
FROM (SELECT chatd_test.user(chatd_test.org()) AS usr) AS u;

CREATE TEMP TABLE c AS
SELECT
    chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS empty,
    chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS unfinished,
    chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS filtered,
    chatd_test.chat((SELECT t.usr FROM t), p_model => (SELECT t.model FROM t)) AS bad;

SELECT lives_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '[]', '{"input_tokens": 9, "output_tokens": 256}',
            p_finish_reason => 'length')$$,
        (SELECT c.empty FROM c), chatd_test.claim((SELECT c.empty FROM c))
    ),
    'a finished step with no parts (finish_reason length) is accepted'
);
SELECT is(
    (
        SELECT row(m.content, m.output_tokens, m.total_cost_micros, m.finish_reason)::text
        FROM chatd.messages AS m
        WHERE m.chat_id = (SELECT c.empty FROM c) AND m.role = 'assistant'
    ),
    row('[]'::jsonb, 256::bigint, 9 * 1 + 256 * 2::bigint, 'length'::text)::text,
    'the empty step keeps its usage, cost and finish reason'
);
SELECT is(chatd_test.status((SELECT c.empty FROM c)), 'waiting', 'and the chat goes on as after any reply');

SELECT throws_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '[]')$$,
        (SELECT c.unfinished FROM c), chatd_test.claim((SELECT c.unfinished FROM c))
    ),
    'CD007', NULL, 'no parts without a finish reason is still refused'
);
SELECT throws_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '"x"', p_finish_reason => 'eos')$$,
        (SELECT c.unfinished FROM c), (
            SELECT lease FROM chatd.chats
            WHERE id = (SELECT c.unfinished FROM c)
        )
    ),
    'CD007', NULL, 'an unknown finish reason is refused'
);

SELECT lives_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '"I started"', '{"input_tokens": 5, "output_tokens": 3}',
            p_finish_reason => 'content_filter')$$,
        (SELECT c.filtered FROM c), chatd_test.claim((SELECT c.filtered FROM c))
    ),
    'a content_filter stop finishes the step'
);
SELECT is(chatd_test.status((SELECT c.filtered FROM c)), 'error', 'content_filter: the chat goes to error');
SELECT is(
    (
        SELECT last_error ->> 'kind' FROM chatd.chats
        WHERE id = (SELECT c.filtered FROM c)
    ), 'content_filter',
    'with a content_filter ChatError'
);
SELECT is(
    (
        SELECT (last_error ->> 'retryable')::boolean FROM chatd.chats
        WHERE id = (SELECT c.filtered FROM c)
    ), FALSE,
    'that is not retryable'
);
SELECT is(
    (
        SELECT row(m.finish_reason, m.total_cost_micros)::text FROM chatd.messages AS m
        WHERE m.chat_id = (SELECT c.filtered FROM c) AND m.role = 'assistant'
    ),
    row('content_filter'::text, 5 * 1 + 3 * 2::bigint)::text,
    'the filtered step is stored and billed'
);

SELECT lives_ok(
    format(
        $$SELECT chatd.finish_turn(%L, %s, '"est"', '{"input_tokens": 2, "output_tokens": 1, "estimated": true}',
            p_finish_reason => 'stop')$$,
        (SELECT c.bad FROM c), chatd_test.claim((SELECT c.bad FROM c))
    ),
    'estimated usage is accepted'
);
SELECT is(
    (
        SELECT m.usage_estimated FROM chatd.messages AS m
        WHERE m.chat_id = (SELECT c.bad FROM c) AND m.role = 'assistant'
    ),
    TRUE, 'and flagged usage_estimated'
);

SELECT throws_ok(
    $$SELECT chatd.admin_upsert_provider('gw', 'anthropic', NULL, NULL, TRUE, 'basic')$$,
    'CD007', NULL, 'an unknown auth header is refused'
);
CREATE TEMP TABLE gw AS
SELECT
    chatd_test.model_config(
        p_provider => chatd.admin_upsert_provider('gw', 'anthropic', NULL, NULL, TRUE, 'bearer', FALSE)
    ) AS model;
SELECT is(
    (chatd._model_json((SELECT gw.model FROM gw)) -> 'provider') - ARRAY['name', 'base_url', 'api_key_env', 'api'],
    '{"kind": "anthropic", "auth_header": "bearer", "stream_usage": false}'::jsonb,
    'the provider row''s auth header and stream usage reach the worker'
);

SELECT * FROM finish();
ROLLBACK;
