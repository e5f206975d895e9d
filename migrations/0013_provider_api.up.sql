-- 0013 provider APIs and extended thinking (issue 19, items 11 and 12).
--
-- providers.api: which HTTP API the worker speaks to the provider.
-- 'chat_completions' (POST /chat/completions) or 'responses' (POST
-- /responses, the OpenAI Responses API) for the openai and openai-compat
-- kinds; 'messages' (the Anthropic Messages API) for the anthropic kind.
-- NULL: the kind's default ('chat_completions', or 'messages').
-- providers and model_configs are small admin tables (a handful of rows),
-- so validating these CHECKs at once is a trivial scan; NOT VALID buys
-- nothing here.
-- squawk-ignore-file constraint-missing-not-valid
ALTER TABLE chatd.providers
ADD COLUMN api text CHECK (api IN ('chat_completions', 'responses', 'messages')),
ADD CONSTRAINT providers_api_fits_kind CHECK (
    api IS NULL OR (kind = 'anthropic') = (api = 'messages')
);

-- model_configs.thinking_budget_tokens: Anthropic extended thinking. NULL:
-- off. Otherwise the worker sends thinking {type: enabled, budget_tokens:
-- N}; the Messages API wants N >= 1024 and below max_tokens
-- (max_output_tokens).
ALTER TABLE chatd.model_configs
ADD COLUMN thinking_budget_tokens integer CHECK (thinking_budget_tokens > 0),
ADD CONSTRAINT model_configs_thinking_below_max_output CHECK (
    thinking_budget_tokens < max_output_tokens
);
