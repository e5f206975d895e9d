ALTER TABLE chatd.messages
DROP COLUMN usage_estimated,
DROP COLUMN finish_reason;

ALTER TABLE chatd.providers
DROP COLUMN stream_usage,
DROP COLUMN auth_header;
