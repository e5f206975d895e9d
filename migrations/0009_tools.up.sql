-- 0009 tools (issue 13, DESIGN.md section 11, docs/tools.md).
--
-- chats.tools: the client tools of a chat, [{name, description,
-- input_schema}], validated by chatd._tool_definitions (create_chat,
-- send_message); executed by the application (submit_tool_results).
--
-- mcp_servers: MCP servers registered by an administrator. The worker is
-- the MCP client: streamable HTTP (url) or stdio (command). secret_env is
-- the NAME of the environment variable holding a bearer token (sent as
-- Authorization: Bearer for HTTP, passed in the environment for stdio);
-- secrets never live in the database.
--
-- chats.mcp_servers / model_configs.mcp_servers: names of the servers
-- whose tools a chat sees (the union of both).
--
-- settings: limits of the tool loop (steps per turn, tool timeout,
-- result size).
CREATE TABLE chatd.mcp_servers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- tools are exposed to the model as mcp__<server>__<tool>
    name text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,19}$'),
    url text CHECK (url ~ '^https?://' AND length(url) <= 2000),
    command text CHECK (length(command) BETWEEN 1 AND 2000),
    secret_env text CHECK (secret_env ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    enabled boolean NOT NULL DEFAULT TRUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((url IS NULL) <> (command IS NULL))
);

ALTER TABLE chatd.chats
ADD COLUMN tools jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(tools) = 'array'),
ADD COLUMN mcp_servers text[] NOT NULL DEFAULT '{}';

ALTER TABLE chatd.model_configs
ADD COLUMN mcp_servers text[] NOT NULL DEFAULT '{}';

ALTER TABLE chatd.settings
ADD COLUMN max_tool_steps integer NOT NULL DEFAULT 25 CHECK (max_tool_steps > 0),
ADD COLUMN tool_timeout interval NOT NULL DEFAULT '60 seconds' CHECK (tool_timeout > '0'),
ADD COLUMN tool_result_max_bytes integer NOT NULL DEFAULT 262144 CHECK (tool_result_max_bytes >= 1024);
