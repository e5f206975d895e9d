ALTER TABLE chatd.settings
DROP COLUMN tool_result_max_bytes,
DROP COLUMN tool_timeout,
DROP COLUMN max_tool_steps;

ALTER TABLE chatd.model_configs
DROP COLUMN mcp_servers;

ALTER TABLE chatd.chats
DROP COLUMN mcp_servers,
DROP COLUMN tools;

DROP TABLE chatd.mcp_servers;
