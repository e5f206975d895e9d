-- Deleting chats (for chatd_app): delete_chat. Deletion is soft, so that
-- spend history survives (docs/spend-limits.md, "Deleted chats"): spend and
-- limits are sums of chatd.messages.total_cost_micros over the chats a user
-- owns, so removing rows would refund the user and reset their limit.
--
-- What a deleted chat keeps: its row (id, organization, owner, workspace,
-- parent and root, model, created_at, deleted_at) and every message row with
-- its role, visibility, model config, token counts, cost, runtime, provider
-- response id, author and created_at. What it loses: the content of every
-- message (replaced by an empty part list, and marked deleted), the title,
-- the error text (last_error keeps only its kind), the retry state, the
-- queue and the stream parts. A deleted chat is archived and idle (waiting,
-- or error / requires_action as it was), its lease is bumped, and the guard
-- (sql/10_guards.sql) freezes its row from then on. Every application
-- function treats it as not found (CD001); no worker claims or writes it.
-- Rows of deleted chats are never purged by chatd today (see
-- docs/state-machine.md, "Deleting chats").

-- Deletes a chat and all its descendants (sub-agent chats), owner-checked
-- like every application function (CD001 unknown or already deleted chat,
-- CD002 not the owner or not a member of its organization). Locks in the
-- tree lock order (the root first, then the subtree in id order), then
-- re-checks the chat under its lock. A pending, running or awaiting_agents
-- member stops: it
-- goes to waiting with its lease bumped, so its worker's finish_turn,
-- publish_parts, record_failure and save_interrupted_turn fail with CD004
-- and its heartbeat reports the chat lost. Notifies kind "deleted" on the
-- channel of every deleted chat and on the owner's channel (no content);
-- wiping messages and the queue notifies nothing more. Spend is unchanged.
-- Returns how many chats were deleted by this call.
CREATE OR REPLACE FUNCTION chatd.delete_chat(p_user_id uuid, p_chat_id uuid)
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
    -- under the lock: a deletion that committed while this call waited wins
    PERFORM chatd._authorized_chat(p_user_id, p_chat_id, TRUE);

    -- the chats first: their "deleted" notifications are the last word, and
    -- the message and queue triggers below stay silent for deleted chats
    UPDATE chatd.chats AS c
    SET deleted_at = now(),
        archived = TRUE,
        title = '',
        status = CASE
            WHEN c.status IN ('pending', 'running', 'awaiting_agents') THEN 'waiting' ELSE c.status
        END::chatd.chat_status,
        worker_id = NULL,
        heartbeat_at = NULL,
        lease = c.lease + 1,
        attempt = 0,
        recoveries = 0,
        retry_state = NULL,
        next_attempt_at = now(),
        last_error = CASE WHEN c.last_error IS NOT NULL THEN jsonb_build_object(
            'message', 'chat deleted', 'kind', c.last_error -> 'kind', 'retryable', FALSE
        ) END,
        interrupted_lease = NULL,
        interrupted_model_config_id = NULL,
        interrupted_last_message_id = NULL
    WHERE c.id = ANY (v_tree) AND c.deleted_at IS NULL;
    GET DIAGNOSTICS v_count = ROW_COUNT;

    DELETE FROM chatd.queued_messages AS q WHERE q.chat_id = ANY (v_tree);
    DELETE FROM chatd.stream_parts AS p WHERE p.chat_id = ANY (v_tree);
    -- content wiped, costs and usage kept (spend history)
    UPDATE chatd.messages AS m SET content = '[]'::jsonb, deleted = TRUE
    WHERE m.chat_id = ANY (v_tree) AND (m.content <> '[]'::jsonb OR NOT m.deleted);
    RETURN v_count;
END
$$;
