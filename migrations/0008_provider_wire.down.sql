ALTER TABLE chatd.messages
DROP COLUMN finish_reason;

ALTER TABLE chatd.providers
DROP COLUMN auth_header;
