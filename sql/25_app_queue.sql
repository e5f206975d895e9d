-- Application functions for messages and the queue (for chatd_app):
-- send_message, delete_queued_message, promote_queued_message, and the queue
-- helpers they share with interrupt_chat and finish_turn (_start_turn,
-- _enqueue, _promote_queue_head).

-- Starts a new turn on a locked chat: -> pending, due now, turn counters
-- reset, last error cleared, optionally a new model. The lease is left as is;
-- a running turn stopped this way is recorded (chats.interrupted_*) so its
-- worker may save the partial answer once (save_interrupted_turn).
-- p_turn_last_message_id is the chat's last message before the caller
-- inserted the new turn's message (chatd._last_message_id, read first).
DROP FUNCTION IF EXISTS chatd._start_turn(uuid, uuid);
CREATE OR REPLACE FUNCTION chatd._start_turn(
    p_chat_id uuid, p_model_config_id uuid, p_turn_last_message_id bigint
)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
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
            c, 'pending',
            p_model_config_id => p_model_config_id, p_turn_last_message_id => p_turn_last_message_id
        ) AS r
    )
    WHERE c.id = p_chat_id;
END
$$;

-- Appends to a locked chat's queue (FIFO); CD005 when it holds
-- settings.queue_limit messages already. Returns the queued message.
CREATE OR REPLACE FUNCTION chatd._enqueue(p_chat_id uuid, p_user_id uuid, p_content jsonb, p_model_config_id uuid)
RETURNS chatd.queued_messages
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_limit integer;
    v_count bigint;
    v_next bigint;
    v_row chatd.queued_messages;
BEGIN
    SELECT s.queue_limit INTO STRICT v_limit FROM chatd.settings AS s;
    SELECT count(*), coalesce(max(q.position), 0) + 1 INTO v_count, v_next
    FROM chatd.queued_messages AS q WHERE q.chat_id = p_chat_id;
    IF v_count >= v_limit THEN
        RAISE EXCEPTION 'chat %: queue full (% of % messages)', p_chat_id, v_count, v_limit
            USING ERRCODE = 'CD005';
    END IF;
    INSERT INTO chatd.queued_messages (chat_id, position, content, model_config_id, created_by)
    VALUES (p_chat_id, v_next, p_content, p_model_config_id, p_user_id)
    RETURNING * INTO v_row;
    RETURN v_row;
END
$$;

-- Moves the head of a chat's queue into the conversation: deletes it,
-- inserts it as a user message, and returns its model config (NULL when
-- the queued message keeps the chat's model) or NULL when the queue is
-- empty. The caller has locked the chat and updates its status after this
-- (so the status notification names the promoted message).
CREATE OR REPLACE FUNCTION chatd._promote_queue_head(p_chat_id uuid, OUT o_promoted boolean, OUT o_model uuid)
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_head chatd.queued_messages;
BEGIN
    DELETE FROM chatd.queued_messages AS q
    WHERE q.id = (
        SELECT q2.id FROM chatd.queued_messages AS q2 WHERE q2.chat_id = p_chat_id ORDER BY q2.position LIMIT 1
    )
    RETURNING q.* INTO v_head;
    o_promoted := v_head.id IS NOT NULL;
    o_model := v_head.model_config_id;
    IF o_promoted THEN
        INSERT INTO chatd.messages (chat_id, role, content, model_config_id, created_by)
        VALUES (p_chat_id, 'user', v_head.content, v_head.model_config_id, v_head.created_by);
    END IF;
END
$$;

-- Sends a user message. Every message is an admission (spend limit, CD006
-- at once, nothing queued), whether it is sent at once or queued: a queued
-- message is admitted again when it is promoted.
--   waiting/error, empty queue: -> pending at once;
--   waiting/error with a non-empty queue (left by a failed turn): the
--   message is queued and the queue head goes out at once: -> pending;
--   pending/running or a non-empty queue: queued (FIFO, CD005 when full);
--   busy_behavior 'interrupt' on a pending/running chat: the turn stops and
--   the message goes out at once (or, behind a non-empty queue, is queued and
--   the queue head goes out at once): -> pending.
-- Without p_model_config_id the chat's model must be enabled, with an
-- enabled provider (CD007 otherwise, as create_chat). requires_action (the
-- turn waits for client tool results) and awaiting_agents (for sub-agents;
-- with busy_behavior 'interrupt' they are interrupted too) are busy: the message is queued; with
-- busy_behavior 'interrupt' the pending calls are answered with is_error
-- results ("cancelled") and the message goes out. p_tools (NULL: keep)
-- replaces the chat's client tools (chatd._tool_definitions, CD007).
-- Returns {queued, message_id | queued_id, position, interrupted, status, version}.
DROP FUNCTION IF EXISTS chatd.send_message(uuid, uuid, jsonb, text, uuid);
CREATE OR REPLACE FUNCTION chatd.send_message(
    p_user_id uuid,
    p_chat_id uuid,
    p_content jsonb,
    p_busy_behavior text DEFAULT 'queue',
    p_model_config_id uuid DEFAULT NULL,
    p_tools jsonb DEFAULT NULL
)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_content jsonb;
    v_model uuid;
    v_queue_length bigint;
    v_busy boolean;
    v_interrupt boolean;
    v_queued chatd.queued_messages;
    v_head_model uuid;
    v_message_id bigint;
    v_turn_last bigint;
    v_result jsonb;
    v_tools jsonb;
BEGIN
    v_content := chatd._content(p_content);
    IF p_tools IS NOT NULL THEN
        v_tools := chatd._tool_definitions(p_tools);
    END IF;
    IF p_busy_behavior IS NULL OR p_busy_behavior NOT IN ('queue', 'interrupt') THEN
        RAISE EXCEPTION 'invalid busy_behavior %: expected queue or interrupt', p_busy_behavior
            USING ERRCODE = 'CD007';
    END IF;
    IF p_model_config_id IS NOT NULL THEN
        v_model := chatd._usable_model(p_model_config_id);
    END IF;
    v_chat := chatd._authorized_chat(p_user_id, p_chat_id, TRUE);
    IF v_chat.archived THEN
        RAISE EXCEPTION 'chat % is archived: send_message refused', p_chat_id USING ERRCODE = 'CD008';
    END IF;
    IF v_model IS NULL THEN
        PERFORM chatd._usable_model(v_chat.model_config_id);
    END IF;
    -- after the chat row lock, before anything is written, queued or not
    PERFORM chatd.admit_spend(p_user_id, v_chat.organization_id);
    SELECT count(*) INTO v_queue_length FROM chatd.queued_messages AS q WHERE q.chat_id = p_chat_id;
    v_busy := v_chat.status IN ('pending', 'running', 'requires_action', 'awaiting_agents');
    v_interrupt := v_busy AND p_busy_behavior = 'interrupt';
    IF v_tools IS NOT NULL THEN
        UPDATE chatd.chats AS c SET tools = v_tools WHERE c.id = p_chat_id;
    END IF;
    IF v_interrupt THEN
        PERFORM chatd._cancel_pending_calls(v_chat, 'cancelled: the user sent a new message');
        PERFORM chatd._interrupt_agents(p_chat_id);
    END IF;

    IF v_queue_length = 0 AND (NOT v_busy OR v_interrupt) THEN
        -- sent now
        -- the message first, the status last: the status notification then
        -- names this message (last_message_id)
        v_turn_last := chatd._last_message_id(p_chat_id);
        INSERT INTO chatd.messages (chat_id, role, content, model_config_id, created_by)
        VALUES (p_chat_id, 'user', v_content, v_model, p_user_id)
        RETURNING id INTO v_message_id;
        PERFORM chatd._start_turn(p_chat_id, v_model, v_turn_last);
        v_result := jsonb_build_object('queued', FALSE, 'message_id', v_message_id);
    ELSE
        v_queued := chatd._enqueue(p_chat_id, p_user_id, v_content, v_model);
        v_result := jsonb_build_object('queued', TRUE, 'queued_id', v_queued.id, 'position', v_queued.position);
        IF v_interrupt OR NOT v_busy THEN
            -- the turn is over (or there was none, or it failed): the queue head goes out
            SELECT q.model_config_id INTO v_head_model FROM chatd.queued_messages AS q
            WHERE q.chat_id = p_chat_id ORDER BY q.position LIMIT 1;
            v_turn_last := chatd._last_message_id(p_chat_id);
            PERFORM chatd._promote_queue_head(p_chat_id);
            PERFORM chatd._start_turn(p_chat_id, v_head_model, v_turn_last);
        END IF;
    END IF;
    SELECT v_result || jsonb_build_object('interrupted', v_interrupt, 'status', c.status, 'version', c.version)
    INTO v_result
    FROM chatd.chats AS c WHERE c.id = p_chat_id;
    RETURN v_result;
END
$$;

-- Removes a queued message (CD007 when it is not in this chat's queue).
CREATE OR REPLACE FUNCTION chatd.delete_queued_message(p_user_id uuid, p_chat_id uuid, p_queued_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
BEGIN
    v_chat := chatd._authorized_chat(p_user_id, p_chat_id, TRUE);
    IF v_chat.archived THEN
        RAISE EXCEPTION 'chat % is archived: delete_queued_message refused', p_chat_id USING ERRCODE = 'CD008';
    END IF;
    DELETE FROM chatd.queued_messages AS q WHERE q.id = p_queued_id AND q.chat_id = p_chat_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid queued message: % is not queued in chat %', p_queued_id, p_chat_id
            USING ERRCODE = 'CD007';
    END IF;
END
$$;

-- Sends a queued message now: it leaves the queue, becomes a user message,
-- and the chat goes to pending. A running or pending turn is interrupted
-- (no lease bump, as interrupt_chat). A new turn, so an admission: at the
-- spend limit CD006 and nothing changes (the message stays queued). Its
-- model (or, without one, the chat's) must be enabled (CD007).
-- requires_action, awaiting_agents: CD003. Returns the message id.
CREATE OR REPLACE FUNCTION chatd.promote_queued_message(p_user_id uuid, p_chat_id uuid, p_queued_id bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_queued chatd.queued_messages;
    v_id bigint;
    v_turn_last bigint;
BEGIN
    v_chat := chatd._authorized_chat(p_user_id, p_chat_id, TRUE);
    IF v_chat.archived THEN
        RAISE EXCEPTION 'chat % is archived: promote_queued_message refused', p_chat_id USING ERRCODE = 'CD008';
    END IF;
    IF v_chat.status IN ('requires_action', 'awaiting_agents') THEN
        RAISE EXCEPTION 'chat %: invalid status transition from % to pending (promote_queued_message)',
            p_chat_id, v_chat.status
            USING ERRCODE = 'CD003';
    END IF;
    SELECT q.* INTO v_queued FROM chatd.queued_messages AS q WHERE q.id = p_queued_id AND q.chat_id = p_chat_id;
    IF v_queued.id IS NULL THEN
        RAISE EXCEPTION 'invalid queued message: % is not queued in chat %', p_queued_id, p_chat_id
            USING ERRCODE = 'CD007';
    END IF;
    PERFORM chatd._usable_model(coalesce(v_queued.model_config_id, v_chat.model_config_id));
    PERFORM chatd.admit_spend(p_user_id, v_chat.organization_id);
    -- the message first, the status last (its notification names it)
    v_turn_last := chatd._last_message_id(p_chat_id);
    DELETE FROM chatd.queued_messages AS q WHERE q.id = p_queued_id;
    INSERT INTO chatd.messages (chat_id, role, content, model_config_id, created_by)
    VALUES (p_chat_id, 'user', v_queued.content, v_queued.model_config_id, v_queued.created_by)
    RETURNING id INTO v_id;
    PERFORM chatd._start_turn(p_chat_id, v_queued.model_config_id, v_turn_last);
    RETURN v_id;
END
$$;
