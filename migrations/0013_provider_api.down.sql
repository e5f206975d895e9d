ALTER TABLE chatd.model_configs
DROP CONSTRAINT model_configs_thinking_below_max_output,
DROP COLUMN thinking_budget_tokens;

ALTER TABLE chatd.providers
DROP CONSTRAINT providers_api_fits_kind,
DROP COLUMN api;
