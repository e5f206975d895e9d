-- Administration of MCP servers (chatd mcp add|list|remove; owner only,
-- like the other admin_* functions). A server is reached over streamable
-- HTTP (url) or stdio (command, run by the worker); secret_env names the
-- environment variable of the worker holding its bearer token, never the
-- token. docs/tools.md.

-- Registers or updates an MCP server; exactly one of p_url, p_command.
-- CD007 for a bad name (1 to 20 of [a-z0-9-], starting with a letter or
-- digit), url, command or variable name. Returns its id.
CREATE OR REPLACE FUNCTION chatd.admin_upsert_mcp_server(
    p_name text,
    p_url text DEFAULT NULL,
    p_command text DEFAULT NULL,
    p_secret_env text DEFAULT NULL,
    p_enabled boolean DEFAULT TRUE
)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    IF p_name IS NULL OR p_name !~ '^[a-z0-9][a-z0-9-]{0,19}$' THEN
        RAISE EXCEPTION 'invalid MCP server name %: 1 to 20 of a-z, 0-9 and -', left(p_name, 100)
            USING ERRCODE = 'CD007';
    END IF;
    IF (p_url IS NULL) = (p_command IS NULL) THEN
        RAISE EXCEPTION 'invalid MCP server %: give exactly one of url (streamable HTTP) and command (stdio)', p_name
            USING ERRCODE = 'CD007';
    END IF;
    IF p_url !~ '^https?://' OR length(p_url) > 2000 THEN
        RAISE EXCEPTION 'invalid MCP server url %: expected http(s)://...', left(p_url, 100) USING ERRCODE = 'CD007';
    END IF;
    IF length(p_command) NOT BETWEEN 1 AND 2000 THEN
        RAISE EXCEPTION 'invalid MCP server command: 1 to 2000 characters' USING ERRCODE = 'CD007';
    END IF;
    IF p_secret_env !~ '^[A-Za-z_][A-Za-z0-9_]*$' THEN
        RAISE EXCEPTION 'invalid secret variable name %: the NAME of an environment variable, not a secret',
            left(p_secret_env, 40)
            USING ERRCODE = 'CD007';
    END IF;
    INSERT INTO chatd.mcp_servers AS s (name, url, command, secret_env, enabled)
    VALUES (p_name, p_url, p_command, p_secret_env, coalesce(p_enabled, TRUE))
    ON CONFLICT (name) DO UPDATE
        SET url = excluded.url,
            command = excluded.command,
            secret_env = excluded.secret_env,
            enabled = excluded.enabled
    RETURNING s.id INTO v_id;
    RETURN v_id;
END
$$;

-- The registered MCP servers, by name, with the model configs that enable
-- them for every chat.
CREATE OR REPLACE FUNCTION chatd.admin_list_mcp_servers()
RETURNS TABLE (name text, url text, command text, secret_env text, enabled boolean, models text[])
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT s.name, s.url, s.command, s.secret_env, s.enabled,
        ARRAY(
            SELECT m.model FROM chatd.model_configs AS m WHERE s.name = ANY (m.mcp_servers) ORDER BY m.model
        )
    FROM chatd.mcp_servers AS s
    ORDER BY s.name
$$;

-- Removes an MCP server and its name from every model config and chat
-- (their next turns no longer see its tools). Returns whether it existed.
CREATE OR REPLACE FUNCTION chatd.admin_remove_mcp_server(p_name text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    DELETE FROM chatd.mcp_servers AS s WHERE s.name = p_name;
    IF NOT FOUND THEN
        RETURN FALSE;
    END IF;
    UPDATE chatd.model_configs AS m SET mcp_servers = array_remove(m.mcp_servers, p_name)
    WHERE p_name = ANY (m.mcp_servers);
    UPDATE chatd.chats AS c SET mcp_servers = array_remove(c.mcp_servers, p_name)
    WHERE p_name = ANY (c.mcp_servers);
    RETURN TRUE;
END
$$;

-- Enables MCP servers for every chat of a model config (p_model: its id or
-- model name), replacing the list; CD007 for an unknown model or server.
CREATE OR REPLACE FUNCTION chatd.admin_set_model_mcp_servers(p_model text, p_servers text[])
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_servers text [] := chatd._mcp_server_names(p_servers);
BEGIN
    UPDATE chatd.model_configs AS m SET mcp_servers = v_servers
    WHERE m.model = p_model OR m.id = CASE WHEN chatd._admin_is_uuid(p_model) THEN p_model::uuid END;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid model: % not found', left(p_model, 200) USING ERRCODE = 'CD007';
    END IF;
END
$$;

REVOKE ALL ON FUNCTION chatd.admin_upsert_mcp_server(text, text, text, text, boolean) FROM public;
REVOKE ALL ON FUNCTION chatd.admin_list_mcp_servers() FROM public;
REVOKE ALL ON FUNCTION chatd.admin_remove_mcp_server(text) FROM public;
REVOKE ALL ON FUNCTION chatd.admin_set_model_mcp_servers(text, text[]) FROM public;
