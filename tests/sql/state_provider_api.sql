-- Provider API and extended thinking settings (migration 0013, issue 19
-- items 11 and 12): admin_upsert_provider's api and admin_upsert_model's
-- thinking budget are checked at config time (CD007) and reach the
-- worker's model payload (_model_json).
BEGIN;
SELECT plan(15);

SELECT throws_ok(
    $$SELECT chatd.admin_upsert_provider('oa', 'openai', p_api => 'completions')$$,
    'CD007', NULL, 'an unknown provider api is refused'
);
SELECT throws_ok(
    $$SELECT chatd.admin_upsert_provider('an', 'anthropic', p_api => 'responses')$$,
    'CD007', NULL, 'an anthropic provider cannot speak the Responses API'
);
SELECT throws_ok(
    $$SELECT chatd.admin_upsert_provider('oa', 'openai-compat', 'http://h/v1', p_api => 'messages')$$,
    'CD007', NULL, 'an OpenAI kind cannot speak the Messages API'
);

CREATE TEMP TABLE pr AS
SELECT
    chatd.admin_upsert_provider('oa', 'openai', p_api => 'responses') AS responses,
    chatd.admin_upsert_provider('compat', 'openai-compat', 'http://h/v1') AS compat,
    chatd.admin_upsert_provider('an', 'anthropic') AS anthropic;

-- (_model_json is STABLE: it reads the models in a later statement)
CREATE TEMP TABLE m AS
SELECT
    chatd.admin_upsert_model('oa', 'gpt-x') AS responses,
    chatd.admin_upsert_model('compat', 'llama') AS compat,
    chatd.admin_upsert_model('an', 'claude') AS anthropic;

SELECT is(
    chatd._model_json((SELECT m.responses FROM m)) #>> '{provider,api}',
    'responses', 'the provider row''s api reaches the worker'
);
SELECT is(
    chatd._model_json((SELECT m.compat FROM m)) #>> '{provider,api}',
    'chat_completions', 'no api: an OpenAI kind speaks Chat Completions'
);
SELECT is(
    chatd._model_json((SELECT m.anthropic FROM m)) #>> '{provider,api}',
    'messages', 'no api: anthropic speaks Messages'
);
SELECT throws_ok(
    $$UPDATE chatd.providers SET api = 'responses' WHERE name = 'an'$$,
    '23514', NULL, 'the table refuses an api that does not fit the kind, whoever writes it'
);

SELECT throws_ok(
    $$SELECT chatd.admin_upsert_model('oa', 'gpt-x', p_thinking_budget_tokens => 2048)$$,
    'CD007', NULL, 'a thinking budget on a non-anthropic provider is refused'
);
SELECT throws_ok(
    $$SELECT chatd.admin_upsert_model('an', 'claude', p_thinking_budget_tokens => 1023)$$,
    'CD007', NULL, 'a thinking budget under 1024 tokens is refused'
);
SELECT throws_ok(
    $$SELECT chatd.admin_upsert_model('an', 'claude', p_max_output_tokens => 4096,
        p_thinking_budget_tokens => 4096)$$,
    'CD007', 'invalid thinking budget 4096: must be below max_output_tokens (4096)',
    'a thinking budget not below max_output_tokens is refused, naming both'
);
SELECT lives_ok(
    $$SELECT chatd.admin_upsert_model('an', 'claude', p_max_output_tokens => 8192,
        p_thinking_budget_tokens => 2048)$$,
    'a budget of 1024 or more below max_output_tokens is accepted'
);
SELECT is(
    chatd._model_json((SELECT m.anthropic FROM m)) ->> 'thinking_budget_tokens',
    '2048', 'the thinking budget reaches the worker'
);
SELECT throws_ok(
    $$UPDATE chatd.model_configs SET max_output_tokens = 2048 WHERE model = 'claude'$$,
    '23514', NULL, 'the table keeps the budget below max_output_tokens, whoever writes it'
);
SELECT lives_ok(
    $$SELECT chatd.admin_upsert_model('an', 'claude', p_max_output_tokens => 8192)$$,
    'the model is upserted again without a budget'
);
SELECT is(
    chatd._model_json((SELECT m.anthropic FROM m)) -> 'thinking_budget_tokens',
    'null'::jsonb, 'and thinking is off'
);

SELECT * FROM finish();
ROLLBACK;
