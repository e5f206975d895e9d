-- Sub-agents spawned by the model (issue 14, DESIGN.md section 11,
-- docs/agents.md): the built-in tool spawn_agent, the child chats it
-- creates, and the trigger that answers the parent when a child is done.
--
-- Lifecycle. A model step with spawn_agent calls is committed by
-- commit_tool_step (sql/35_tools.sql), which creates one child chat per
-- valid call in the same transaction (_spawn_agents) and answers an
-- invalid one at once with an is_error result the model sees. A spawn call
-- stays unanswered while its child runs; when the only unanswered calls of
-- the step are spawn calls, the parent goes to awaiting_agents, a status no
-- worker claims (_tool_loop_next). When a child reaches waiting or error,
-- chats_agent_answer writes its final answer (or its error, is_error) into
-- the parent as the spawn call's result and, once no call is left, makes
-- the parent pending: the next model step runs with every answer. No
-- worker polls for children.
--
-- Children: same organization, owner (they spend the parent's owner's
-- money: each spawn is an admission), workspace and client type as the
-- parent; model: the spawn's, else the parent's; MCP servers: the spawn's
-- `tools` (a subset of the parent's), else the parent's; no client tools;
-- may spawn in turn while the depth allows (settings.max_agent_depth).

-- The built-in tool as offered to the model (_turn_tools).
CREATE OR REPLACE FUNCTION chatd._spawn_agent_tool()
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT jsonb_build_object(
        'name', 'spawn_agent',
        'description',
        'Start a sub-agent: a new chat that works on `prompt` on its own (it may use tools) and whose final '
        'answer comes back as the result of this call. Several calls in one step run in parallel; the '
        'conversation continues when every sub-agent of the step has answered.',
        'input_schema', jsonb_build_object(
            'type', 'object',
            'properties', jsonb_build_object(
                'prompt', jsonb_build_object(
                    'type', 'string', 'description', 'the task, with everything the sub-agent needs to know'
                ),
                'model', jsonb_build_object(
                    'type', 'string', 'description', 'optional model (name or display name); default: yours'
                ),
                'tools', jsonb_build_object(
                    'type', 'array', 'items', jsonb_build_object('type', 'string'),
                    'description', 'optional MCP server names the sub-agent may use (a subset of yours)'
                )
            ),
            'required', jsonb_build_array('prompt'),
            'additionalProperties', FALSE
        )
    )
$$;

-- How many levels below its root a chat is (0 for a root). Walks the
-- parent links: at most settings.max_agent_depth + 1 rows for chats that
-- spawn_agent created.
CREATE OR REPLACE FUNCTION chatd._agent_depth(p_chat_id uuid)
RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    WITH RECURSIVE up AS (
        SELECT c.parent_chat_id, 0 AS depth FROM chatd.chats AS c WHERE c.id = p_chat_id
        UNION ALL
        SELECT c.parent_chat_id, up.depth + 1
        FROM up JOIN chatd.chats AS c ON c.id = up.parent_chat_id
        WHERE up.depth < 100
    )
    SELECT max(up.depth) FROM up
$$;

-- Whether the model of a chat may spawn sub-agents now: agents enabled on
-- the chat or its model config, and the chat above the depth limit.
CREATE OR REPLACE FUNCTION chatd._agents_allowed(p_chat chatd.chats)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT (p_chat.agents OR m.agents) AND chatd._agent_depth(p_chat.id) < s.max_agent_depth
    FROM chatd.model_configs AS m CROSS JOIN chatd.settings AS s
    WHERE m.id = p_chat.model_config_id
$$;

-- Why one spawn_agent call cannot run (the output of its is_error result),
-- or NULL when it can. p_index: its place among the step's spawn calls
-- (1-based). OUT o_model and o_servers: the child's model config and MCP
-- servers when it can run.
CREATE OR REPLACE FUNCTION chatd._spawn_refusal(
    p_parent chatd.chats,
    p_input jsonb,
    p_index integer,
    OUT o_reason text,
    OUT o_model uuid,
    OUT o_servers text[]
)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_settings chatd.settings;
    v_allowed text [];
    v_extra text;
    v_refusal jsonb;
BEGIN
    SELECT * INTO STRICT v_settings FROM chatd.settings;
    SELECT string_agg(k, ', ') INTO v_extra FROM jsonb_object_keys(p_input) AS k
    WHERE k NOT IN ('prompt', 'model', 'tools');
    IF v_extra IS NOT NULL THEN
        o_reason := format('invalid input: unknown keys %s (expected prompt, model, tools)', left(v_extra, 200));
    ELSIF jsonb_typeof(p_input -> 'prompt') IS DISTINCT FROM 'string' OR btrim(p_input ->> 'prompt') = '' THEN
        o_reason := 'invalid input: prompt (a non-empty string) is required';
    ELSIF octet_length(p_input ->> 'prompt') > 1048576 THEN
        o_reason := 'invalid input: prompt is longer than 1 MB';
    ELSIF p_index > v_settings.max_agent_fanout THEN
        o_reason := format('not run: at most %s sub-agents per step (settings.max_agent_fanout)',
            v_settings.max_agent_fanout);
    ELSIF NOT chatd._agents_allowed(p_parent) THEN
        o_reason := format('not run: sub-agents may not spawn sub-agents past depth %s (settings.max_agent_depth), '
            'or sub-agents are not enabled for this chat', v_settings.max_agent_depth);
    ELSIF p_parent.archived OR EXISTS (
        SELECT 1 FROM chatd.chats AS r WHERE r.id = p_parent.root_chat_id AND r.archived
    ) THEN
        o_reason := 'not run: the chat is archived';
    END IF;
    IF o_reason IS NOT NULL THEN
        RETURN;
    END IF;

    IF p_input ? 'model' THEN
        IF jsonb_typeof(p_input -> 'model') <> 'string' THEN
            o_reason := 'invalid input: model must be a string';
            RETURN;
        END IF;
        SELECT m.id INTO o_model
        FROM chatd.model_configs AS m JOIN chatd.providers AS p ON p.id = m.provider_id
        WHERE m.enabled AND p.enabled
            AND (m.id::text = p_input ->> 'model' OR m.display_name = p_input ->> 'model'
                OR m.model = p_input ->> 'model')
        ORDER BY m.id::text = p_input ->> 'model' DESC, m.is_default DESC, m.id
        LIMIT 1;
        IF o_model IS NULL THEN
            o_reason := format('not run: model %s is unknown or disabled', left(p_input ->> 'model', 200));
            RETURN;
        END IF;
    ELSE
        SELECT m.id INTO o_model
        FROM chatd.model_configs AS m JOIN chatd.providers AS p ON p.id = m.provider_id
        WHERE m.id = p_parent.model_config_id AND m.enabled AND p.enabled;
        IF o_model IS NULL THEN
            o_reason := 'not run: this chat''s model is disabled';
            RETURN;
        END IF;
    END IF;

    SELECT ARRAY(
        SELECT DISTINCT n FROM unnest(p_parent.mcp_servers || m.mcp_servers) AS n ORDER BY n
    )
    INTO v_allowed
    FROM chatd.model_configs AS m WHERE m.id = p_parent.model_config_id;
    IF p_input ? 'tools' THEN
        IF jsonb_typeof(p_input -> 'tools') <> 'array' OR EXISTS (
            SELECT 1 FROM jsonb_array_elements(p_input -> 'tools') AS t (value) WHERE jsonb_typeof(t.value) <> 'string'
        ) THEN
            o_reason := 'invalid input: tools must be an array of MCP server names';
            RETURN;
        END IF;
        SELECT string_agg(t.value, ', ') INTO v_extra
        FROM jsonb_array_elements_text(p_input -> 'tools') AS t (value)
        WHERE t.value <> ALL (v_allowed);
        IF v_extra IS NOT NULL THEN
            o_reason := format('not run: tools %s are not available to this chat (available: %s)',
                left(v_extra, 200), coalesce(nullif(array_to_string(v_allowed, ', '), ''), 'none'));
            RETURN;
        END IF;
        o_servers := ARRAY(
            SELECT DISTINCT t.value FROM jsonb_array_elements_text(p_input -> 'tools') AS t (value) ORDER BY t.value
        );
    ELSE
        o_servers := v_allowed;
    END IF;

    -- the child's turn spends the parent's owner's money
    v_refusal := chatd._spend_refusal(p_parent.owner_id, p_parent.organization_id);
    IF v_refusal IS NOT NULL THEN
        o_reason := format('not run: the spend limit is reached (%s)',
            chatd._usage_limit_error(v_refusal) ->> 'message');
    END IF;
END
$$;

-- Creates the children of a committed tool step of p_parent (locked, under
-- its lease; the caller holds a lock on the root taken first, see
-- commit_tool_step): one pending chat per valid spawn_agent call (source
-- builtin) of the step p_step_id, with the call's prompt as its first user
-- message; a call that cannot run (_spawn_refusal) is answered at once, all
-- such answers in one tool message. Returns the number of children created.
CREATE OR REPLACE FUNCTION chatd._spawn_agents(p_parent chatd.chats, p_step_id bigint)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_call record;
    v_check record;
    v_index integer := 0;
    v_child uuid;
    v_errors jsonb := '[]'::jsonb;
BEGIN
    FOR v_call IN
        SELECT p.value AS part
        FROM chatd.messages AS m
        CROSS JOIN LATERAL jsonb_array_elements(m.content) WITH ORDINALITY AS p (value, ord)
        WHERE m.id = p_step_id AND p.value ->> 'type' = 'tool-call' AND p.value ->> 'source' = 'builtin'
            AND p.value ->> 'tool_name' = 'spawn_agent'
        ORDER BY p.ord
    LOOP
        v_index := v_index + 1;
        SELECT * INTO v_check FROM chatd._spawn_refusal(p_parent, v_call.part -> 'input', v_index) AS r;
        IF v_check.o_reason IS NOT NULL THEN
            v_errors := v_errors || jsonb_build_array(jsonb_build_object(
                'tool_call_id', v_call.part ->> 'tool_call_id', 'output', v_check.o_reason, 'is_error', TRUE
            ));
            CONTINUE;
        END IF;
        v_child := gen_random_uuid();
        INSERT INTO chatd.chats (
            id, organization_id, owner_id, workspace_id, parent_chat_id, root_chat_id, title, status,
            client_type, model_config_id, mcp_servers, agents, parent_tool_call_id
        )
        VALUES (
            v_child, p_parent.organization_id, p_parent.owner_id, p_parent.workspace_id, p_parent.id,
            p_parent.root_chat_id, left(btrim(v_call.part -> 'input' ->> 'prompt'), 200), 'pending',
            p_parent.client_type, v_check.o_model, v_check.o_servers,
            coalesce(p_parent.agents OR (
                SELECT m.agents FROM chatd.model_configs AS m WHERE m.id = p_parent.model_config_id
            ), FALSE),
            v_call.part ->> 'tool_call_id'
        );
        INSERT INTO chatd.messages (chat_id, role, content)
        VALUES (
            v_child, 'user',
            jsonb_build_array(jsonb_build_object('type', 'text', 'text', v_call.part -> 'input' ->> 'prompt'))
        );
    END LOOP;
    IF v_errors <> '[]'::jsonb THEN
        INSERT INTO chatd.messages (chat_id, role, content, model_config_id)
        VALUES (p_parent.id, 'tool', chatd._tool_results(p_parent.id, v_errors, ARRAY['builtin']),
            p_parent.model_config_id);
    END IF;
    RETURN v_index - jsonb_array_length(v_errors);
END
$$;

-- The final answer of a child chat, as the output of its spawn call: the
-- text of its newest live assistant message (what the user of the child
-- would read), or a note when it gave none.
CREATE OR REPLACE FUNCTION chatd._agent_answer(p_child_id uuid)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT coalesce(nullif((
        SELECT string_agg(p.value ->> 'text', '' ORDER BY p.ord)
        FROM (
            SELECT m.content FROM chatd.messages AS m
            WHERE m.chat_id = p_child_id AND m.role = 'assistant' AND NOT m.deleted AND m.visibility <> 'model'
            ORDER BY m.id DESC
            LIMIT 1
        ) AS last
        CROSS JOIN LATERAL jsonb_array_elements(last.content) WITH ORDINALITY AS p (value, ord)
        WHERE p.value ->> 'type' = 'text'
    ), ''), '(the sub-agent gave no text answer)')
$$;

-- Trigger: a child created by spawn_agent reached waiting or error from a
-- busy status. Under the parent's row lock (taken after the child's: a
-- finishing child and its parent's worker serialize on the parent), when
-- the child's spawn call is still pending in the parent: writes the
-- child's answer (waiting) or its ChatError message (error, is_error) as
-- the call's result; then, when the parent is awaiting_agents and no call
-- is left, the parent goes to pending (its next model step is an admission
-- of the owner: refused, it goes to error with a usage_limit ChatError).
-- The pending check under the lock is what makes two children finishing in
-- concurrent transactions resume the parent exactly once. A parent that
-- was interrupted, archived, edited or deleted no longer has the call
-- pending: nothing is written.
CREATE OR REPLACE FUNCTION chatd.chats_agent_answer()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_parent chatd.chats;
    v_result jsonb;
    v_refusal jsonb;
BEGIN
    SELECT * INTO v_parent FROM chatd.chats AS c WHERE c.id = NEW.parent_chat_id FOR UPDATE;
    IF v_parent.id IS NULL OR v_parent.deleted_at IS NOT NULL OR NOT EXISTS (
        SELECT 1 FROM chatd._pending_tool_calls(v_parent.id) AS p
        WHERE p.tool_call_id = NEW.parent_tool_call_id AND p.tool_name = 'spawn_agent' AND p.source = 'builtin'
    ) THEN
        RETURN NULL;
    END IF;
    v_result := jsonb_build_array(CASE
        WHEN NEW.status = 'error' THEN jsonb_build_object(
            'tool_call_id', NEW.parent_tool_call_id,
            'output', format('sub-agent %s failed (%s): %s', NEW.id, NEW.last_error ->> 'kind',
                NEW.last_error ->> 'message'),
            'is_error', TRUE
        )
        ELSE jsonb_build_object(
            'tool_call_id', NEW.parent_tool_call_id, 'output', chatd._agent_answer(NEW.id), 'is_error', FALSE
        )
    END);
    INSERT INTO chatd.messages (chat_id, role, content, model_config_id)
    VALUES (v_parent.id, 'tool', chatd._tool_results(v_parent.id, v_result, ARRAY['builtin']),
        v_parent.model_config_id);
    IF v_parent.status = 'awaiting_agents' AND NOT EXISTS (SELECT 1 FROM chatd._pending_tool_calls(v_parent.id)) THEN
        v_refusal := chatd._spend_refusal(v_parent.owner_id, v_parent.organization_id);
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
                c, CASE WHEN v_refusal IS NULL THEN 'pending' ELSE 'error' END::chatd.chat_status,
                p_last_error => chatd._usage_limit_error(v_refusal)
            ) AS r
        )
        WHERE c.id = v_parent.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER chats_40_agent_answer
AFTER UPDATE OF status ON chatd.chats
FOR EACH ROW WHEN (
    new.parent_tool_call_id IS NOT NULL
    AND new.status IN ('waiting', 'error')
    AND old.status NOT IN ('waiting', 'error')
)
EXECUTE FUNCTION chatd.chats_agent_answer();

-- Interrupts the busy sub-agents below p_chat_id (children that
-- spawn_agent created, and theirs), parents before children so each
-- child's answer finds its spawn call already cancelled: pending, running,
-- requires_action or awaiting_agents -> waiting, as interrupt_chat (a
-- running child's worker may still save its partial answer). Called by
-- interrupt_chat, edit_message and send_message with busy_behavior
-- interrupt after they stopped p_chat_id's own turn. Returns how many
-- chats it interrupted.
CREATE OR REPLACE FUNCTION chatd._interrupt_agents(p_chat_id uuid)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_child chatd.chats;
    v_count integer := 0;
BEGIN
    FOR v_child IN
        WITH RECURSIVE tree AS (
            SELECT c.id, 1 AS depth FROM chatd.chats AS c
            WHERE c.parent_chat_id = p_chat_id AND c.parent_tool_call_id IS NOT NULL
            UNION ALL
            SELECT c.id, tree.depth + 1 FROM chatd.chats AS c JOIN tree ON c.parent_chat_id = tree.id
            WHERE c.parent_tool_call_id IS NOT NULL AND tree.depth < 100
        )
        SELECT c.* FROM chatd.chats AS c JOIN tree ON tree.id = c.id
        WHERE c.status IN ('pending', 'running', 'requires_action', 'awaiting_agents') AND c.deleted_at IS NULL
        ORDER BY tree.depth, c.id
    LOOP
        SELECT * INTO v_child FROM chatd.chats AS c WHERE c.id = v_child.id FOR UPDATE;
        IF v_child.status IN ('pending', 'running', 'requires_action', 'awaiting_agents') THEN
            PERFORM chatd._stop_turn(v_child, 'cancelled: the parent chat was interrupted');
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END
$$;
