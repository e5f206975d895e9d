-- Application functions on chats (for chatd_app): create, interrupt, edit,
-- archive, unarchive, title. Every function takes the acting user first and
-- refuses (CD002) unless that user owns the chat and is a member of its
-- organization. See docs/state-machine.md.

-- Creates a chat: one INSERT of the final pending row, then its system
-- prompt and first user message in one INSERT. A sub-agent chat (parent
-- given) lives in the parent's organization and inherits its client type
-- and root. Admission (spend) is checked first. Locks follow the tree lock
-- order of archive_chat (the root first, then the parent): creating a
-- sub-agent chat and archiving its tree never deadlock. p_agents: the
-- model may spawn sub-agents (the built-in tool spawn_agent,
-- docs/agents.md); NULL: as the model config says (model_configs.agents).
DROP FUNCTION IF EXISTS chatd.create_chat(
    uuid, uuid, jsonb, uuid, text, text, uuid, uuid, chatd.client_type, jsonb, text[]
);
CREATE OR REPLACE FUNCTION chatd.create_chat(
    p_user_id uuid,
    p_organization_id uuid,
    p_content jsonb,
    p_model_config_id uuid DEFAULT NULL,
    p_title text DEFAULT NULL,
    p_system_prompt text DEFAULT NULL,
    p_workspace_id uuid DEFAULT NULL,
    p_parent_chat_id uuid DEFAULT NULL,
    p_client_type chatd.client_type DEFAULT NULL,
    p_tools jsonb DEFAULT NULL,
    p_mcp_servers text[] DEFAULT NULL,
    p_agents boolean DEFAULT NULL
)
RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_id uuid := gen_random_uuid();
    v_org uuid := p_organization_id;
    v_root uuid := v_id;
    v_client_type chatd.client_type := coalesce(p_client_type, 'api');
    v_parent chatd.chats;
    v_workspace_org uuid;
    v_content jsonb;
    v_model uuid;
    v_tools jsonb;
    v_servers text [];
BEGIN
    v_content := chatd._content(p_content);
    v_model := chatd._usable_model(p_model_config_id);
    v_tools := chatd._tool_definitions(p_tools);
    v_servers := chatd._mcp_server_names(p_mcp_servers);
    IF length(p_title) > 1000 THEN
        RAISE EXCEPTION 'invalid title: longer than 1000 characters' USING ERRCODE = 'CD007';
    END IF;
    IF octet_length(p_system_prompt) > 1048576 THEN
        RAISE EXCEPTION 'invalid system prompt: % bytes, at most 1 MB (1048576 bytes)', octet_length(p_system_prompt)
            USING ERRCODE = 'CD007';
    END IF;

    IF p_parent_chat_id IS NOT NULL THEN
        -- the root first (the child's foreign keys lock the parent and the
        -- root), then the parent: the order of archive_chat. Locked: an
        -- archive of the parent cannot miss this child.
        v_parent := chatd._authorized_chat(p_user_id, p_parent_chat_id, FALSE);
        PERFORM 1 FROM chatd.chats AS c WHERE c.id = v_parent.root_chat_id FOR UPDATE;
        v_parent := chatd._authorized_chat(p_user_id, p_parent_chat_id, TRUE);
        IF v_parent.archived THEN
            RAISE EXCEPTION 'chat % is archived: no sub-agent chat can be created under it', v_parent.id
                USING ERRCODE = 'CD008';
        END IF;
        IF v_org IS NOT NULL AND v_org <> v_parent.organization_id THEN
            RAISE EXCEPTION 'invalid organization %: a sub-agent chat lives in its parent''s organization %',
                v_org, v_parent.organization_id
                USING ERRCODE = 'CD007';
        END IF;
        IF p_client_type IS NOT NULL AND p_client_type <> v_parent.client_type THEN
            RAISE EXCEPTION 'invalid client type %: a sub-agent chat inherits its parent''s client type %',
                p_client_type, v_parent.client_type
                USING ERRCODE = 'CD007';
        END IF;
        v_org := v_parent.organization_id;
        v_root := v_parent.root_chat_id;
        v_client_type := v_parent.client_type;
    END IF;

    IF v_org IS NULL THEN
        RAISE EXCEPTION 'invalid organization: an organization is required' USING ERRCODE = 'CD007';
    END IF;
    IF p_user_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM chatd.organization_members AS om
        WHERE om.organization_id = v_org AND om.user_id = p_user_id
    ) THEN
        RAISE EXCEPTION 'user % may not create chats in organization %', p_user_id, v_org USING ERRCODE = 'CD002';
    END IF;

    IF p_workspace_id IS NOT NULL THEN
        SELECT w.organization_id INTO v_workspace_org FROM chatd.workspaces AS w WHERE w.id = p_workspace_id;
        IF v_workspace_org IS NULL THEN
            RAISE EXCEPTION 'invalid workspace: workspace % not found', p_workspace_id USING ERRCODE = 'CD007';
        END IF;
        IF v_workspace_org <> v_org THEN
            RAISE EXCEPTION 'invalid workspace: workspace % belongs to another organization than %',
                p_workspace_id, v_org
                USING ERRCODE = 'CD007';
        END IF;
    END IF;

    PERFORM chatd.admit_spend(p_user_id, v_org);

    INSERT INTO chatd.chats (
        id, organization_id, owner_id, workspace_id, parent_chat_id, root_chat_id,
        title, status, client_type, model_config_id, tools, mcp_servers, agents
    )
    VALUES (
        v_id, v_org, p_user_id, p_workspace_id, p_parent_chat_id, v_root,
        coalesce(p_title, ''), 'pending', v_client_type, v_model, v_tools, v_servers, coalesce(p_agents, FALSE)
    );
    INSERT INTO chatd.messages (chat_id, role, content, visibility, created_by)
    SELECT v_id, m.role, m.content, m.visibility, p_user_id
    FROM (VALUES
        (1, 'system'::chatd.message_role,
            jsonb_build_array(jsonb_build_object('type', 'text', 'text', p_system_prompt)),
            'model'::chatd.message_visibility),
        (2, 'user'::chatd.message_role, v_content, 'both'::chatd.message_visibility)
    ) AS m (ord, role, content, visibility)
    WHERE m.ord = 2 OR coalesce(p_system_prompt, '') <> ''
    ORDER BY m.ord;
    RETURN v_id;
END
$$;

-- Stops the current turn of p_chat (locked; pending, running,
-- requires_action or awaiting_agents) -> waiting. When messages are queued,
-- the turn is over and the queue head goes out at once (-> pending), an
-- admission of the chat's owner (docs/spend-limits.md): when the spend limit
-- refuses it, the turn still stops, the chat goes to error with a
-- usage_limit ChatError and the queue stays. The lease is NOT bumped: the
-- worker of an interrupted running turn may still save its partial message
-- with save_interrupted_turn (once) until the next claim (chats.interrupted_*
-- records that turn). The pending tool calls (client calls of
-- requires_action, spawn calls of awaiting_agents) are answered with
-- is_error results saying p_reason, so the history stays well formed.
-- Returns the new status. Used by interrupt_chat and _interrupt_agents.
CREATE OR REPLACE FUNCTION chatd._stop_turn(p_chat chatd.chats, p_reason text)
RETURNS chatd.chat_status
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_head chatd.queued_messages;
    v_refusal jsonb;
    v_status chatd.chat_status;
    v_turn_last bigint;
BEGIN
    SELECT q.* INTO v_head FROM chatd.queued_messages AS q
    WHERE q.chat_id = p_chat.id ORDER BY q.position LIMIT 1;
    IF v_head.id IS NOT NULL THEN
        v_refusal := chatd._spend_refusal(p_chat.owner_id, p_chat.organization_id);
    END IF;
    v_turn_last := chatd._last_message_id(p_chat.id);
    -- the promoted message first, the status last (its notification names it)
    PERFORM chatd._cancel_pending_calls(p_chat, p_reason);
    IF v_head.id IS NOT NULL AND v_refusal IS NULL THEN
        PERFORM chatd._promote_queue_head(p_chat.id);
    END IF;
    UPDATE chatd.chats AS c
    SET (
        status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
        next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
        model_config_id
    ) = (
        SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state, r.last_error,
            r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id, r.interrupted_last_message_id,
            r.model_config_id
        FROM chatd._turn_reset(
            c,
            CASE
                WHEN v_head.id IS NULL THEN 'waiting'
                WHEN v_refusal IS NOT NULL THEN 'error'
                ELSE 'pending'
            END::chatd.chat_status,
            p_last_error => chatd._usage_limit_error(v_refusal),
            p_model_config_id => CASE WHEN v_refusal IS NULL THEN v_head.model_config_id END,
            p_turn_last_message_id => v_turn_last
        ) AS r
    )
    WHERE c.id = p_chat.id
    RETURNING c.status INTO v_status;
    RETURN v_status;
END
$$;

-- Stops the current turn (_stop_turn): pending, running, requires_action
-- or awaiting_agents -> waiting (or pending/error when messages are
-- queued, see _stop_turn). Waiting and error chats are left as they are.
-- The busy sub-agents the chat spawned (and theirs) are interrupted too
-- (_interrupt_agents): their spawn calls are answered with "cancelled"
-- results first. Returns the new status.
CREATE OR REPLACE FUNCTION chatd.interrupt_chat(p_user_id uuid, p_chat_id uuid)
RETURNS chatd.chat_status
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_status chatd.chat_status;
BEGIN
    v_chat := chatd._authorized_chat(p_user_id, p_chat_id, TRUE);
    IF v_chat.status NOT IN ('pending', 'running', 'requires_action', 'awaiting_agents') THEN
        RETURN v_chat.status;
    END IF;
    v_status := chatd._stop_turn(v_chat, 'cancelled: the chat was interrupted');
    PERFORM chatd._interrupt_agents(p_chat_id);
    RETURN v_status;
END
$$;

-- Edits a user message: soft-deletes it and every later message, clears the
-- queue, inserts the new content as a user message and runs the chat again
-- (any status -> pending; the lease is bumped so a worker still running the
-- old turn can write nothing). Optional new model; without one, the chat's
-- model must be enabled (CD007 otherwise, as create_chat). Refused on
-- archived chats (CD008). Admission (spend) is checked. Returns the new
-- message id.
CREATE OR REPLACE FUNCTION chatd.edit_message(
    p_user_id uuid,
    p_chat_id uuid,
    p_message_id bigint,
    p_content jsonb,
    p_model_config_id uuid DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_content jsonb;
    v_model uuid;
    v_id bigint;
BEGIN
    v_content := chatd._content(p_content);
    IF p_model_config_id IS NOT NULL THEN
        v_model := chatd._usable_model(p_model_config_id);
    END IF;
    v_chat := chatd._authorized_chat(p_user_id, p_chat_id, TRUE);
    IF v_chat.archived THEN
        RAISE EXCEPTION 'chat % is archived: edit_message refused (% -> pending)', p_chat_id, v_chat.status
            USING ERRCODE = 'CD008';
    END IF;
    IF v_model IS NULL THEN
        PERFORM chatd._usable_model(v_chat.model_config_id);
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM chatd.messages AS m
        WHERE m.id = p_message_id AND m.chat_id = p_chat_id AND m.role = 'user' AND NOT m.deleted
    ) THEN
        RAISE EXCEPTION 'invalid message: % is not a live user message of chat %', p_message_id, p_chat_id
            USING ERRCODE = 'CD007';
    END IF;
    PERFORM chatd.admit_spend(p_user_id, v_chat.organization_id);

    -- messages and queue first, the status last: the status notification
    -- names the new message (last_message_id)
    UPDATE chatd.messages AS m SET deleted = TRUE
    WHERE m.chat_id = p_chat_id AND m.id >= p_message_id AND NOT m.deleted;
    DELETE FROM chatd.queued_messages AS q WHERE q.chat_id = p_chat_id;
    INSERT INTO chatd.messages (chat_id, role, content, model_config_id, created_by)
    VALUES (p_chat_id, 'user', v_content, v_model, p_user_id)
    RETURNING id INTO v_id;
    UPDATE chatd.chats AS c
    SET (
        status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
        next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
        model_config_id
    ) = (
        SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state, r.last_error,
            r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id, r.interrupted_last_message_id,
            r.model_config_id
        FROM chatd._turn_reset(
            c, 'pending', p_bump_lease => TRUE, p_model_config_id => v_model
        ) AS r
    )
    WHERE c.id = p_chat_id;
    -- the sub-agents of the edited-away turn answer calls that no longer exist
    PERFORM chatd._interrupt_agents(p_chat_id);
    RETURN v_id;
END
$$;

-- The chat and all its descendants (sub-agent chats), locked: the tree's
-- root first, then the subtree in id order, so concurrent tree operations
-- cannot deadlock each other.
CREATE OR REPLACE FUNCTION chatd._lock_subtree(p_chat chatd.chats)
RETURNS uuid[]
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM chatd.chats AS c WHERE c.id = p_chat.root_chat_id FOR UPDATE;
    RETURN ARRAY(
        WITH RECURSIVE tree AS (
            SELECT c.id FROM chatd.chats AS c WHERE c.id = p_chat.id
            UNION
            SELECT c.id FROM chatd.chats AS c JOIN tree ON c.parent_chat_id = tree.id
        )
        SELECT c.id FROM chatd.chats AS c
        WHERE c.id IN (SELECT tree.id FROM tree)
        ORDER BY c.id
        FOR UPDATE OF c
    );
END
$$;

-- Archives the chat and its descendants. A busy member (pending, running,
-- awaiting_agents) goes to waiting in the same UPDATE (no lease bump: the worker of a running
-- member may still save the partial message once, see interrupt_chat);
-- queued messages of the tree are dropped.
-- Returns how many chats were archived by this call.
CREATE OR REPLACE FUNCTION chatd.archive_chat(p_user_id uuid, p_chat_id uuid)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_tree uuid[];
    v_count integer;
BEGIN
    v_chat := chatd._authorized_chat(p_user_id, p_chat_id, FALSE);
    v_tree := chatd._lock_subtree(v_chat);
    DELETE FROM chatd.queued_messages AS q WHERE q.chat_id = ANY (v_tree);
    -- a member awaiting its sub-agents stops waiting: its spawn calls are
    -- answered "cancelled" (the history stays well formed), so the
    -- children archived below answer nothing
    PERFORM chatd._cancel_pending_calls(c, 'cancelled: the chat was archived')
    FROM chatd.chats AS c WHERE c.id = ANY (v_tree) AND c.status = 'awaiting_agents' AND NOT c.archived;
    -- a busy member's turn stops (keeping its last error and due time); the
    -- turn columns of any other member stay as they are
    UPDATE chatd.chats AS c
    SET
        archived = TRUE,
        (
            status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
            next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
            model_config_id
        ) = (
            SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state, r.last_error,
                r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id, r.interrupted_last_message_id,
                r.model_config_id
            FROM chatd._turn_reset(
                c,
                CASE WHEN c.status IN ('pending', 'running', 'awaiting_agents') THEN 'waiting' END::chatd.chat_status,
                p_last_error => c.last_error,
                p_next_attempt_at => c.next_attempt_at
            ) AS r
        )
    WHERE c.id = ANY (v_tree) AND NOT c.archived;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Unarchives the chat and its descendants. Refused (CD008) while the
-- chat's parent is archived. Returns how many chats were unarchived.
CREATE OR REPLACE FUNCTION chatd.unarchive_chat(p_user_id uuid, p_chat_id uuid)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_tree uuid[];
    v_count integer;
BEGIN
    v_chat := chatd._authorized_chat(p_user_id, p_chat_id, FALSE);
    v_tree := chatd._lock_subtree(v_chat);
    IF EXISTS (
        SELECT 1 FROM chatd.chats AS p WHERE p.id = v_chat.parent_chat_id AND p.archived
    ) THEN
        RAISE EXCEPTION 'chat % cannot be unarchived: its parent % is archived', p_chat_id, v_chat.parent_chat_id
            USING ERRCODE = 'CD008';
    END IF;
    UPDATE chatd.chats AS c SET archived = FALSE
    WHERE c.id = ANY (v_tree) AND c.archived;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Sets a chat's title (notifies kind "title").
CREATE OR REPLACE FUNCTION chatd.set_chat_title(p_user_id uuid, p_chat_id uuid, p_title text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF p_title IS NULL OR length(p_title) > 1000 THEN
        RAISE EXCEPTION 'invalid title: required, at most 1000 characters' USING ERRCODE = 'CD007';
    END IF;
    PERFORM chatd._authorized_chat(p_user_id, p_chat_id, TRUE);
    UPDATE chatd.chats AS c SET title = p_title WHERE c.id = p_chat_id;
END
$$;
