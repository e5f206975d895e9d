-- 0008 provider wire details (issue 19).
--
-- providers.auth_header: how the worker sends the API key. 'bearer'
-- (Authorization: Bearer KEY, what OpenAI documents) or 'x-api-key'
-- (x-api-key: KEY, what Anthropic documents). NULL: the header the
-- provider kind's API documents. For gateways that want the other one.
--
-- providers.stream_usage: for the Chat Completions kinds, whether the worker
-- sends stream_options.include_usage and requires the usage chunk after
-- the finish chunk. NULL or TRUE: yes. FALSE: a server that rejects or
-- ignores stream_options; the worker sends none and estimates usage.
ALTER TABLE chatd.providers
ADD COLUMN auth_header text CHECK (auth_header IN ('bearer', 'x-api-key')),
ADD COLUMN stream_usage boolean;

-- messages.finish_reason: why the model step stopped, in one vocabulary
-- for every provider: 'stop' (a natural end), 'length' (the output token
-- limit), 'content_filter' (the provider's filter or a refusal),
-- 'tool_calls', 'other' (anything else a server sent). NULL for user,
-- system and tool messages, interrupted turns and rows older than this
-- migration.
--
-- messages.usage_estimated: the token counts were estimated by the worker
-- (the server reported none, or the turn was cut), not reported by the
-- provider; they are billed all the same.
ALTER TABLE chatd.messages
ADD COLUMN finish_reason text CHECK (
    finish_reason IN ('stop', 'length', 'content_filter', 'tool_calls', 'other')
),
ADD COLUMN usage_estimated boolean NOT NULL DEFAULT FALSE;
