-- Tools (issue 13, DESIGN.md section 11, docs/tools.md): tool definitions,
-- the tool loop of a turn (owned here: the worker commits each step and
-- each result, SQL decides what comes next) and submit_tool_results.
--
-- Parts: a step's calls are tool-call parts of an assistant message
--     {type: 'tool-call', tool_call_id, tool_name, input (object), source}
-- with source 'client' (the application runs it), 'mcp' or 'builtin' (the
-- worker runs it); each answer is a tool-result part of a tool message
--     {type: 'tool-result', tool_call_id, tool_name, output, is_error}.
-- The pending calls of a chat are the calls of its last live assistant
-- message, when that message is a tool step (finish_reason 'tool_calls')
-- newer than the last user message, that no live tool-result answers yet.

-- Validates client tool definitions: a JSON array (NULL: none) of at most
-- 128 objects {name, description, input_schema}, 256 KB in all. name:
-- 1 to 64 characters of [A-Za-z0-9_-], unique, not starting with mcp__
-- (the prefix of MCP tools, mcp__<server>__<tool>); description: a string
-- (default ''); input_schema: a JSON object (a JSON Schema). No other keys.
-- Returns the definitions normalized; CD007 otherwise.
CREATE OR REPLACE FUNCTION chatd._tool_definitions(p_tools jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_tool jsonb;
    v_names text[] := '{}'::text[];
    v_out jsonb := '[]'::jsonb;
    v_extra text;
BEGIN
    IF p_tools IS NULL OR p_tools = 'null'::jsonb THEN
        RETURN '[]'::jsonb;
    END IF;
    IF jsonb_typeof(p_tools) <> 'array' THEN
        RAISE EXCEPTION 'invalid tools: expected an array of tool definitions, got %', jsonb_typeof(p_tools)
            USING ERRCODE = 'CD007';
    END IF;
    IF jsonb_array_length(p_tools) > 128 OR octet_length(p_tools::text) > 262144 THEN
        RAISE EXCEPTION 'invalid tools: at most 128 tools and 256 KB (got % tools, % bytes)',
            jsonb_array_length(p_tools), octet_length(p_tools::text)
            USING ERRCODE = 'CD007';
    END IF;
    FOR v_tool IN SELECT e.value FROM jsonb_array_elements(p_tools) AS e (value) LOOP
        IF jsonb_typeof(v_tool) <> 'object' THEN
            RAISE EXCEPTION 'invalid tool: expected an object {name, description, input_schema}, got %',
                left(v_tool::text, 100)
                USING ERRCODE = 'CD007';
        END IF;
        IF jsonb_typeof(v_tool -> 'name') IS DISTINCT FROM 'string'
            OR (v_tool ->> 'name') !~ '^[A-Za-z0-9_-]{1,64}$' THEN
            RAISE EXCEPTION 'invalid tool: name % must be 1 to 64 characters of letters, digits, _ and -',
                coalesce(left(v_tool ->> 'name', 100), 'missing')
                USING ERRCODE = 'CD007';
        END IF;
        IF (v_tool ->> 'name') LIKE 'mcp\_\_%' THEN
            RAISE EXCEPTION 'invalid tool %: the prefix mcp__ is reserved for MCP tools', v_tool ->> 'name'
                USING ERRCODE = 'CD007';
        END IF;
        IF (v_tool ->> 'name') = ANY (v_names) THEN
            RAISE EXCEPTION 'invalid tools: duplicate tool name %', v_tool ->> 'name' USING ERRCODE = 'CD007';
        END IF;
        IF v_tool ? 'description' AND jsonb_typeof(v_tool -> 'description') <> 'string' THEN
            RAISE EXCEPTION 'invalid tool %: description must be a string', v_tool ->> 'name' USING ERRCODE = 'CD007';
        END IF;
        IF jsonb_typeof(v_tool -> 'input_schema') IS DISTINCT FROM 'object' THEN
            RAISE EXCEPTION 'invalid tool %: input_schema must be a JSON Schema object', v_tool ->> 'name'
                USING ERRCODE = 'CD007';
        END IF;
        SELECT string_agg(k, ', ') INTO v_extra FROM jsonb_object_keys(v_tool) AS k
        WHERE k NOT IN ('name', 'description', 'input_schema');
        IF v_extra IS NOT NULL THEN
            RAISE EXCEPTION 'invalid tool %: unknown keys %', v_tool ->> 'name', left(v_extra, 200)
                USING ERRCODE = 'CD007';
        END IF;
        v_names := v_names || (v_tool ->> 'name');
        v_out := v_out || jsonb_build_array(jsonb_build_object(
            'name', v_tool ->> 'name',
            'description', coalesce(v_tool ->> 'description', ''),
            'input_schema', v_tool -> 'input_schema'
        ));
    END LOOP;
    RETURN v_out;
END
$$;

-- Validates names of registered MCP servers (NULL: none): each must exist
-- in chatd.mcp_servers (CD007 otherwise). Returns them sorted, distinct.
CREATE OR REPLACE FUNCTION chatd._mcp_server_names(p_names text[])
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_unknown text;
BEGIN
    IF p_names IS NULL THEN
        RETURN '{}'::text [];
    END IF;
    SELECT string_agg(coalesce(n, 'NULL'), ', ') INTO v_unknown
    FROM unnest(p_names) AS n
    WHERE n IS NULL OR NOT EXISTS (SELECT 1 FROM chatd.mcp_servers AS s WHERE s.name = n);
    IF v_unknown IS NOT NULL THEN
        RAISE EXCEPTION 'invalid MCP servers: % not registered (chatd mcp add)', left(v_unknown, 300)
            USING ERRCODE = 'CD007';
    END IF;
    RETURN ARRAY(SELECT DISTINCT n FROM unnest(p_names) AS n ORDER BY n);
END
$$;

-- The pending tool calls of a chat (see the top of this file), in the
-- order of the step: (step message id, call id, tool name, source).
CREATE OR REPLACE FUNCTION chatd._pending_tool_calls(p_chat_id uuid)
RETURNS TABLE (step_id bigint, tool_call_id text, tool_name text, source text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    WITH step AS (
        SELECT m.id, m.content, m.finish_reason
        FROM chatd.messages AS m
        WHERE
            m.chat_id = p_chat_id AND NOT m.deleted AND m.role IN ('assistant', 'user')
            AND m.visibility <> 'user'
        ORDER BY m.chat_id DESC, m.id DESC  -- messages_chat_idx, backwards: never the primary key's
        LIMIT 1
    )
    SELECT s.id, p.value ->> 'tool_call_id', p.value ->> 'tool_name', coalesce(p.value ->> 'source', 'client')
    FROM step AS s
    CROSS JOIN LATERAL jsonb_array_elements(s.content) WITH ORDINALITY AS p (value, ord)
    WHERE
        s.finish_reason = 'tool_calls'
        AND p.value ->> 'type' = 'tool-call'
        AND NOT EXISTS (
            SELECT 1
            FROM chatd.messages AS r
            CROSS JOIN LATERAL jsonb_array_elements(r.content) AS rp (value)
            WHERE
                r.chat_id = p_chat_id AND r.id > s.id AND NOT r.deleted AND r.role = 'tool'
                AND rp.value ->> 'type' = 'tool-result'
                AND rp.value ->> 'tool_call_id' = p.value ->> 'tool_call_id'
        )
    ORDER BY p.ord
$$;

-- Validates the answers to pending calls and returns them as tool-result
-- parts. p_results: a non-empty JSON array of {tool_call_id, output,
-- is_error (default false)}; output any JSON value (a string, an object,
-- ...). An id that is not pending in the chat (unknown, already answered,
-- twice in p_results) or whose source is not in p_sources: CD009. An
-- output longer than settings.tool_result_max_bytes is cut to a string of
-- at most that size ending with a marker "[truncated: N bytes]".
CREATE OR REPLACE FUNCTION chatd._tool_results(p_chat_id uuid, p_results jsonb, p_sources text[])
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_max integer;
    v_result jsonb;
    v_call record;
    v_seen text[] := '{}'::text[];
    v_parts jsonb := '[]'::jsonb;
    v_output jsonb;
    v_text text;
    v_extra text;
BEGIN
    IF jsonb_typeof(p_results) IS DISTINCT FROM 'array' OR jsonb_array_length(p_results) = 0 THEN
        RAISE EXCEPTION 'invalid tool results: expected a non-empty array of {tool_call_id, output, is_error}'
            USING ERRCODE = 'CD007';
    END IF;
    SELECT s.tool_result_max_bytes INTO STRICT v_max FROM chatd.settings AS s;
    FOR v_result IN SELECT e.value FROM jsonb_array_elements(p_results) AS e (value) LOOP
        IF jsonb_typeof(v_result) <> 'object' OR jsonb_typeof(v_result -> 'tool_call_id') IS DISTINCT FROM 'string'
            OR NOT v_result ? 'output'
            OR (v_result ? 'is_error' AND jsonb_typeof(v_result -> 'is_error') <> 'boolean') THEN
            RAISE EXCEPTION 'invalid tool result %: expected {tool_call_id: string, output, is_error: boolean}',
                left(v_result::text, 100)
                USING ERRCODE = 'CD007';
        END IF;
        SELECT string_agg(k, ', ') INTO v_extra FROM jsonb_object_keys(v_result) AS k
        WHERE k NOT IN ('tool_call_id', 'output', 'is_error');
        IF v_extra IS NOT NULL THEN
            RAISE EXCEPTION 'invalid tool result: unknown keys %', left(v_extra, 200) USING ERRCODE = 'CD007';
        END IF;
        SELECT p.tool_call_id, p.tool_name, p.source INTO v_call
        FROM chatd._pending_tool_calls(p_chat_id) AS p
        WHERE p.tool_call_id = v_result ->> 'tool_call_id';
        IF v_call.tool_call_id IS NULL OR v_call.tool_call_id = ANY (v_seen) THEN
            RAISE EXCEPTION 'chat %: tool call % is not pending (unknown, or already answered)',
                p_chat_id, left(v_result ->> 'tool_call_id', 200)
                USING ERRCODE = 'CD009';
        END IF;
        IF v_call.source <> ALL (p_sources) THEN
            RAISE EXCEPTION 'chat %: tool call % is a % call, not answered here', p_chat_id, v_call.tool_call_id,
                v_call.source
                USING ERRCODE = 'CD009';
        END IF;
        v_seen := v_seen || v_call.tool_call_id;
        v_output := v_result -> 'output';
        IF octet_length(v_output::text) > v_max THEN
            v_text := CASE WHEN jsonb_typeof(v_output) = 'string' THEN v_output #>> '{}' ELSE v_output::text END;
            v_text := left(v_text, v_max - 64) || format(' [truncated: %s bytes]', octet_length(v_text));
            IF octet_length(v_text) > v_max THEN
                -- multi-byte characters: cut by bytes' worst case
                v_text := left(v_text, (v_max - 64) / 4) || format(' [truncated: %s bytes]', octet_length(v_output::text));
            END IF;
            v_output := to_jsonb(v_text);
        END IF;
        v_parts := v_parts || jsonb_build_array(jsonb_build_object(
            'type', 'tool-result',
            'tool_call_id', v_call.tool_call_id,
            'tool_name', v_call.tool_name,
            'output', v_output,
            'is_error', coalesce((v_result -> 'is_error')::boolean, FALSE)
        ));
    END LOOP;
    RETURN v_parts;
END
$$;

-- Answers every pending call of a chat with an is_error result saying
-- why it was not run (p_reason), as one tool message; nothing when no call
-- is pending. So the history the model sees never holds a call without a
-- result (providers refuse that). Returns the message id or NULL.
CREATE OR REPLACE FUNCTION chatd._cancel_pending_calls(p_chat chatd.chats, p_reason text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_parts jsonb;
    v_id bigint;
BEGIN
    SELECT jsonb_agg(jsonb_build_object(
        'type', 'tool-result', 'tool_call_id', p.tool_call_id, 'tool_name', p.tool_name,
        'output', p_reason, 'is_error', TRUE
    ))
    INTO v_parts
    FROM chatd._pending_tool_calls(p_chat.id) AS p;
    IF v_parts IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO chatd.messages (chat_id, role, content, model_config_id)
    VALUES (p_chat.id, 'tool', v_parts, p_chat.model_config_id)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

-- After a tool step or result is committed on a running chat, what comes
-- next, from the calls still pending: none, or some the worker runs (mcp):
-- the chat stays running; else some client calls: the turn waits for the
-- application, running -> requires_action; else only spawn_agent calls
-- (their children are running): running -> awaiting_agents (sql/34_agents.sql).
-- Both bump the lease (the worker's turn is over; the notification of
-- requires_action names the pending call ids). Returns the chat's status and
-- its pending call ids.
CREATE OR REPLACE FUNCTION chatd._tool_loop_next(p_chat_id uuid, OUT o_status chatd.chat_status, OUT o_pending jsonb)
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_worker boolean;
    v_client boolean;
    v_next chatd.chat_status;
BEGIN
    SELECT
        coalesce(jsonb_agg(p.tool_call_id), '[]'),
        coalesce(bool_or(p.source NOT IN ('client', 'builtin')), FALSE),
        coalesce(bool_or(p.source = 'client'), FALSE)
    INTO o_pending, v_worker, v_client
    FROM chatd._pending_tool_calls(p_chat_id) AS p;
    IF o_pending <> '[]'::jsonb AND NOT v_worker THEN
        v_next := (CASE WHEN v_client THEN 'requires_action' ELSE 'awaiting_agents' END)::chatd.chat_status;
        UPDATE chatd.chats AS c
        SET (
            status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
            next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
            model_config_id
        ) = (
            SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state,
                r.last_error, r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id,
                r.interrupted_last_message_id, r.model_config_id
            FROM chatd._turn_reset(c, v_next, p_bump_lease => TRUE) AS r
        )
        WHERE c.id = p_chat_id;
    END IF;
    SELECT c.status INTO o_status FROM chatd.chats AS c WHERE c.id = p_chat_id;
END
$$;

-- Commits a model step that ended with tool calls, before any tool runs:
-- an assistant message (finish_reason tool_calls) with its text, reasoning
-- and tool-call parts, its usage and cost (the path of finish_turn, so the
-- spend ledger counts it). Fenced by (chat, lease) like finish_turn (CD004).
-- Each tool-call part: tool_call_id (1 to 100 characters of
-- [A-Za-z0-9_.:-], unique in the step), tool_name (1 to 128 of
-- [A-Za-z0-9_-]), input (an object), source client (must name one of the
-- chat's tools), mcp or builtin (only spawn_agent); 1 to 64 calls. CD007
-- otherwise. A step with spawn_agent calls first locks the tree's root
-- (FOR KEY SHARE, before the chat: the lock order of archive_chat), then
-- creates the children in the same transaction (_spawn_agents: a call that
-- cannot run gets its is_error result at once).
-- Then:
--   * the step is tool step number settings.max_tool_steps + 1 of the turn
--     (steps since the last user message): its calls are answered with
--     is_error results and the chat goes to error, ChatError kind
--     step_limit (not retryable);
--   * no mcp call is pending and a client call is: running ->
--     requires_action; only spawn calls: running -> awaiting_agents;
--   * else the chat stays running and the worker runs its mcp calls
--     (commit_tool_results).
-- Returns {message_id, status, pending: [call ids]}.
CREATE OR REPLACE FUNCTION chatd.commit_tool_step(
    p_chat_id uuid,
    p_lease bigint,
    p_content jsonb,
    p_usage jsonb DEFAULT '{}',
    p_provider_response_id text DEFAULT NULL,
    p_runtime_ms bigint DEFAULT NULL
)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_part jsonb;
    v_ids text[] := '{}'::text[];
    v_id bigint;
    v_steps bigint;
    v_max integer;
    v_next record;
BEGIN
    IF jsonb_typeof(p_content) = 'array' AND EXISTS (
        SELECT 1 FROM jsonb_array_elements(p_content) AS e (value)
        WHERE e.value ->> 'type' = 'tool-call' AND e.value ->> 'source' = 'builtin'
    ) THEN
        -- the root before the chat, as archive_chat and create_chat: the
        -- children's foreign keys lock the root too
        PERFORM 1 FROM chatd.chats AS r
        WHERE r.id = (SELECT c.root_chat_id FROM chatd.chats AS c WHERE c.id = p_chat_id) AND r.id <> p_chat_id
        FOR KEY SHARE;
    END IF;
    v_chat := chatd._fenced_chat(p_chat_id, p_lease, 'commit_tool_step');
    IF jsonb_typeof(p_content) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'commit_tool_step: content must be an array of parts' USING ERRCODE = 'CD007';
    END IF;
    FOR v_part IN
        SELECT e.value FROM jsonb_array_elements(p_content) AS e (value) WHERE e.value ->> 'type' = 'tool-call'
    LOOP
        IF jsonb_typeof(v_part -> 'tool_call_id') IS DISTINCT FROM 'string'
            OR (v_part ->> 'tool_call_id') !~ '^[A-Za-z0-9_.:-]{1,100}$'
            OR jsonb_typeof(v_part -> 'tool_name') IS DISTINCT FROM 'string'
            OR (v_part ->> 'tool_name') !~ '^[A-Za-z0-9_-]{1,128}$'
            OR jsonb_typeof(v_part -> 'input') IS DISTINCT FROM 'object'
            OR coalesce(v_part ->> 'source', '') NOT IN ('client', 'mcp', 'builtin') THEN
            RAISE EXCEPTION 'commit_tool_step: invalid tool-call part % (tool_call_id, tool_name, input object, '
                'source client|mcp|builtin)', left(v_part::text, 200)
                USING ERRCODE = 'CD007';
        END IF;
        IF v_part ->> 'source' = 'builtin' AND v_part ->> 'tool_name' <> 'spawn_agent' THEN
            RAISE EXCEPTION 'commit_tool_step: % is not a built-in tool (built-in: spawn_agent)', v_part ->> 'tool_name'
                USING ERRCODE = 'CD007';
        END IF;
        IF (v_part ->> 'tool_call_id') = ANY (v_ids) THEN
            RAISE EXCEPTION 'commit_tool_step: duplicate tool call id %', v_part ->> 'tool_call_id'
                USING ERRCODE = 'CD007';
        END IF;
        IF v_part ->> 'source' = 'client' AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(v_chat.tools) AS t (value)
            WHERE t.value ->> 'name' = v_part ->> 'tool_name'
        ) THEN
            RAISE EXCEPTION 'commit_tool_step: % is not a client tool of chat %', v_part ->> 'tool_name', p_chat_id
                USING ERRCODE = 'CD007';
        END IF;
        v_ids := v_ids || (v_part ->> 'tool_call_id');
    END LOOP;
    IF cardinality(v_ids) NOT BETWEEN 1 AND 64 THEN
        RAISE EXCEPTION 'commit_tool_step: a tool step has 1 to 64 tool-call parts, got %', cardinality(v_ids)
            USING ERRCODE = 'CD007';
    END IF;
    IF EXISTS (SELECT 1 FROM chatd._pending_tool_calls(p_chat_id)) THEN
        RAISE EXCEPTION 'commit_tool_step: chat % still has unanswered tool calls', p_chat_id
            USING ERRCODE = 'CD007';
    END IF;

    v_id := chatd._insert_turn_messages(
        v_chat, p_content, p_usage, p_provider_response_id, p_runtime_ms, '[]', 'both', 'tool_calls'
    );

    SELECT count(*) INTO v_steps FROM chatd.messages AS m
    WHERE
        m.chat_id = p_chat_id AND NOT m.deleted AND m.role = 'assistant' AND m.finish_reason = 'tool_calls'
        AND m.id > coalesce((
            SELECT max(u.id) FROM chatd.messages AS u WHERE u.chat_id = p_chat_id AND u.role = 'user' AND NOT u.deleted
        ), 0);
    SELECT s.max_tool_steps INTO STRICT v_max FROM chatd.settings AS s;
    IF v_steps > v_max THEN
        PERFORM chatd._cancel_pending_calls(v_chat, format('not run: the turn reached its limit of %s tool steps', v_max));
        UPDATE chatd.chats AS c
        SET (
            status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
            next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
            model_config_id
        ) = (
            SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state,
                r.last_error, r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id,
                r.interrupted_last_message_id, r.model_config_id
            FROM chatd._turn_reset(
                c, 'error', p_bump_lease => TRUE,
                p_last_error => jsonb_build_object(
                    'message', format('the turn reached its limit of %s tool steps (settings.max_tool_steps)', v_max),
                    'kind', 'step_limit', 'retryable', FALSE
                )
            ) AS r
        )
        WHERE c.id = p_chat_id;
        RETURN jsonb_build_object('message_id', v_id, 'status', 'error', 'pending', '[]'::jsonb);
    END IF;
    PERFORM chatd._spawn_agents(v_chat, v_id);
    SELECT * INTO v_next FROM chatd._tool_loop_next(p_chat_id) AS n;
    RETURN jsonb_build_object('message_id', v_id, 'status', v_next.o_status, 'pending', v_next.o_pending);
END
$$;

-- Commits results of mcp and builtin calls the worker ran, under the lease
-- (CD004 otherwise), as one tool message: p_results as for
-- submit_tool_results (CD009 for a call that is not pending or is a client
-- call). An empty array commits nothing and only re-checks what comes
-- next. Then, when the calls still pending are all client calls, running
-- -> requires_action. Returns {message_id (NULL when nothing was
-- committed), status, pending: [call ids]}: pending empty and status
-- running means the next model step starts.
CREATE OR REPLACE FUNCTION chatd.commit_tool_results(p_chat_id uuid, p_lease bigint, p_results jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_id bigint;
    v_next record;
BEGIN
    v_chat := chatd._fenced_chat(p_chat_id, p_lease, 'commit_tool_results');
    IF p_results IS DISTINCT FROM '[]'::jsonb THEN
        INSERT INTO chatd.messages (chat_id, role, content, model_config_id)
        VALUES (
            p_chat_id, 'tool', chatd._tool_results(p_chat_id, p_results, ARRAY['mcp', 'builtin']),
            v_chat.model_config_id
        )
        RETURNING id INTO v_id;
    END IF;
    SELECT * INTO v_next FROM chatd._tool_loop_next(p_chat_id) AS n;
    RETURN jsonb_build_object('message_id', v_id, 'status', v_next.o_status, 'pending', v_next.o_pending);
END
$$;

-- The application answers client tool calls of a chat in requires_action
-- (the auth boundary of send_message: CD001, CD002; archived: CD008; any
-- other status: CD003). p_results: a non-empty JSON array of
-- {tool_call_id, output, is_error}; a call id that is not pending
-- (unknown, already answered, or twice in p_results) is refused with
-- CD009 and nothing is written; outputs over settings.tool_result_max_bytes
-- are truncated with a marker. A new model step will run, so it is an
-- admission (CD006). A partial answer keeps the chat in requires_action;
-- when every pending call has a result the chat goes to pending and a
-- worker continues the turn; when only spawn_agent calls remain (their
-- sub-agents still run), to awaiting_agents. Returns {message_id, status, pending: [call
-- ids still unanswered], version}.
CREATE OR REPLACE FUNCTION chatd.submit_tool_results(p_user_id uuid, p_chat_id uuid, p_results jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_parts jsonb;
    v_id bigint;
    v_pending jsonb;
    v_agents_only boolean;
    v_result jsonb;
BEGIN
    v_chat := chatd._authorized_chat(p_user_id, p_chat_id, TRUE);
    IF v_chat.archived THEN
        RAISE EXCEPTION 'chat % is archived: submit_tool_results refused', p_chat_id USING ERRCODE = 'CD008';
    END IF;
    IF v_chat.status <> 'requires_action' THEN
        RAISE EXCEPTION 'chat % is %, not requires_action: no tool call awaits a result', p_chat_id, v_chat.status
            USING ERRCODE = 'CD003';
    END IF;
    v_parts := chatd._tool_results(p_chat_id, p_results, ARRAY['client']);
    PERFORM chatd.admit_spend(p_user_id, v_chat.organization_id);
    -- the message first, the status last (its notification names it)
    INSERT INTO chatd.messages (chat_id, role, content, model_config_id, created_by)
    VALUES (p_chat_id, 'tool', v_parts, v_chat.model_config_id, p_user_id)
    RETURNING id INTO v_id;
    SELECT coalesce(jsonb_agg(p.tool_call_id), '[]'), coalesce(bool_and(p.source = 'builtin'), FALSE)
    INTO v_pending, v_agents_only
    FROM chatd._pending_tool_calls(p_chat_id) AS p;
    IF v_pending = '[]'::jsonb OR v_agents_only THEN
        UPDATE chatd.chats AS c
        SET (
            status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
            next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
            model_config_id
        ) = (
            SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state,
                r.last_error, r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id,
                r.interrupted_last_message_id, r.model_config_id
            FROM chatd._turn_reset(
                c, CASE WHEN v_agents_only THEN 'awaiting_agents' ELSE 'pending' END::chatd.chat_status
            ) AS r
        )
        WHERE c.id = p_chat_id;
    END IF;
    SELECT jsonb_build_object(
        'message_id', v_id, 'status', c.status, 'pending', v_pending, 'version', c.version
    ) INTO v_result
    FROM chatd.chats AS c WHERE c.id = p_chat_id;
    RETURN v_result;
END
$$;

-- What a claimed turn needs to offer tools: NULL when the chat has no
-- client tools, no MCP server and may not spawn sub-agents (a plain chat),
-- else {client: [tool definitions], mcp_servers: [{name, url, command,
-- secret_env}] (enabled servers named by the chat or its model config),
-- builtin: [spawn_agent's definition when _agents_allowed, else none],
-- limits: {max_tool_steps, tool_timeout_ms, tool_result_max_bytes}}. Read
-- by acquire_chats, which does not call it for a chat with no client tools,
-- MCP servers or agents on a model with no MCP servers or agents (NULL: a
-- new source of tools must be named in that CASE too;
-- tests/python/test_claim_tools.py).
CREATE OR REPLACE FUNCTION chatd._turn_tools(p_chat_id uuid)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT CASE WHEN jsonb_array_length(c.tools) > 0 OR srv.list IS NOT NULL OR agents.allowed THEN jsonb_build_object(
        'client', c.tools,
        'mcp_servers', coalesce(srv.list, '[]'),
        'builtin', CASE WHEN agents.allowed THEN jsonb_build_array(chatd._spawn_agent_tool()) ELSE '[]' END,
        'limits', (
            SELECT jsonb_build_object(
                'max_tool_steps', s.max_tool_steps,
                'tool_timeout_ms', (extract(EPOCH FROM s.tool_timeout) * 1000)::bigint,
                'tool_result_max_bytes', s.tool_result_max_bytes
            )
            FROM chatd.settings AS s
        )
    ) END
    FROM chatd.chats AS c
    INNER JOIN chatd.model_configs AS m ON m.id = c.model_config_id
    CROSS JOIN LATERAL (
        SELECT jsonb_agg(jsonb_build_object(
            'name', s.name, 'url', s.url, 'command', s.command, 'secret_env', s.secret_env
        ) ORDER BY s.name) AS list
        FROM chatd.mcp_servers AS s
        WHERE s.enabled AND (s.name = ANY (c.mcp_servers) OR s.name = ANY (m.mcp_servers))
    ) AS srv
    CROSS JOIN LATERAL (
        -- CASE: the depth walk runs only for a chat that may use agents at all
        SELECT CASE WHEN c.agents OR m.agents THEN coalesce(chatd._agents_allowed(c), FALSE) ELSE FALSE END AS allowed
    ) AS agents
    WHERE c.id = p_chat_id
$$;
