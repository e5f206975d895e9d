-- Guards of the chat state machine (DESIGN.md section 4, docs/state-machine.md):
--
-- * chatd.transition_allowed() / status_transitions(): the allowed status changes;
-- * trigger chats_10_guard: rejects, whoever writes it, an INSERT of a chat
--   in any status but pending, every status change not in the table
--   (SQLSTATE CD003) and every lease change that is not a fresh claim or
--   the end of a turn, and drops every UPDATE of a deleted chat (frozen);
-- * trigger chats_20_version: bumps version and updated_at on every real
--   change of a chat row. A heartbeat-only UPDATE (only heartbeat_at
--   changes) and a no-op UPDATE keep version and updated_at, so heartbeats
--   never look like state changes (and the notify trigger, which fires only
--   when version changes, stays silent). An UPDATE that only increments
--   version is a "touch": message and queue triggers use it so that every
--   notification carries a version newer than any earlier snapshot.

-- The allowed status changes: the one place the transition table of
-- DESIGN.md section 4 lives. Staying in a status is always allowed
-- (heartbeats, title changes, archiving an idle chat). A plain list
-- comparison: the guard trigger calls this on every chat update.
CREATE OR REPLACE FUNCTION chatd.transition_allowed(p_from chatd.chat_status, p_to chatd.chat_status)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN p_from = p_to
        OR p_from::text || '>' || p_to::text IN (
            -- send_message (idle, empty queue), edit_message
            'waiting>pending',
            'error>pending',
            -- edit_message, submit_tool_results (every pending call answered)
            'requires_action>pending',
            -- interrupt_chat (the pending client calls are cancelled)
            'requires_action>waiting',
            -- interrupt_chat (the spend limit refused to send the queue head)
            'requires_action>error',
            -- commit_tool_step, commit_tool_results: only client calls pending
            'running>requires_action',
            -- acquire_chats
            'pending>running',
            -- finish_turn (no queue), interrupt_chat, archive_chat, delete_chat
            'running>waiting',
            -- finish_turn (queue head promoted), record_failure (retry),
            -- release_chats, recover_stale_chats, edit_message, send_message
            -- with busy_behavior interrupt, promote_queued_message
            'running>pending',
            -- record_failure (not retryable, attempts exhausted),
            -- recover_stale_chats (too many recoveries), finish_turn and
            -- interrupt_chat (the spend limit refused to send the queue head)
            'running>error',
            -- interrupt_chat, archive_chat, delete_chat
            'pending>waiting',
            -- acquire_chats: the chat's model or provider is disabled;
            -- interrupt_chat: the spend limit refused to send the queue head
            'pending>error',
            -- commit_tool_step, commit_tool_results: only spawn_agent calls
            -- pending (sql/34_agents.sql)
            'running>awaiting_agents',
            -- submit_tool_results: client calls answered, spawn calls remain
            'requires_action>awaiting_agents',
            -- chats_agent_answer (the last child answered), edit_message
            'awaiting_agents>pending',
            -- chats_agent_answer: the spend limit refused the next step
            'awaiting_agents>error',
            -- interrupt_chat, archive_chat, delete_chat (the pending spawn
            -- calls are cancelled)
            'awaiting_agents>waiting'
        );
END
$$;

-- Every allowed (from, to) pair with from <> to, as a table (for documents
-- and tests), derived from transition_allowed.
CREATE OR REPLACE FUNCTION chatd.status_transitions()
RETURNS TABLE (from_status chatd.chat_status, to_status chatd.chat_status)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT f.s, t.s
    FROM unnest(enum_range(NULL::chatd.chat_status)) AS f (s)
    CROSS JOIN unnest(enum_range(NULL::chatd.chat_status)) AS t (s)
    WHERE f.s <> t.s AND chatd.transition_allowed(f.s, t.s)
$$;

CREATE OR REPLACE FUNCTION chatd.chats_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' THEN
            RAISE EXCEPTION 'chat % cannot be created as %: a new chat starts as pending', NEW.id, NEW.status
                USING ERRCODE = 'CD003',
                      HINT = 'create chats with chatd.create_chat()';
        END IF;
        NEW.version := 1;
        RETURN NEW;
    END IF;

    -- A deleted chat (chatd.delete_chat) is frozen: every later UPDATE of
    -- its row is dropped (the statement reports it as not updated), so a
    -- tree operation that reaches a deleted descendant (unarchive_chat of
    -- its parent), a touch or a stray write can neither revive, run nor
    -- announce it.
    IF OLD.deleted_at IS NOT NULL THEN
        RETURN NULL;
    END IF;

    IF NEW.status <> OLD.status AND NOT chatd.transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'chat %: invalid status transition from % to %', NEW.id, OLD.status, NEW.status
            USING ERRCODE = 'CD003',
                  DETAIL = format('allowed from %s: %s', OLD.status, (
                      SELECT coalesce(string_agg(t.to_status::text, ', ' ORDER BY t.to_status), 'none')
                      FROM chatd.status_transitions() AS t WHERE t.from_status = OLD.status
                  ));
    END IF;

    -- The lease is the fencing token: it never goes back, it grows on every
    -- claim, and only a claim or the end of a turn may change it.
    IF NEW.lease < OLD.lease THEN
        RAISE EXCEPTION 'chat %: lease cannot go back from % to % (% -> %)',
            NEW.id, OLD.lease, NEW.lease, OLD.status, NEW.status
            USING ERRCODE = 'CD003';
    END IF;
    IF NEW.status = 'running' AND OLD.status <> 'running' AND NEW.lease <= OLD.lease THEN
        RAISE EXCEPTION 'chat %: a claim (% -> %) must bump the lease (still %)',
            NEW.id, OLD.status, NEW.status, NEW.lease
            USING ERRCODE = 'CD003';
    END IF;
    IF NEW.status = 'running' AND OLD.status = 'running' AND NEW.lease <> OLD.lease THEN
        RAISE EXCEPTION 'chat %: the lease of a running turn cannot change (% -> %)',
            NEW.id, OLD.lease, NEW.lease
            USING ERRCODE = 'CD003';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION chatd.chats_version()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_heartbeat_at timestamptz := NEW.heartbeat_at;
BEGIN
    -- Compare everything but heartbeat_at and updated_at; version is
    -- compared, so "SET version = version + 1" is a deliberate touch.
    NEW.heartbeat_at := OLD.heartbeat_at;
    NEW.updated_at := OLD.updated_at;
    IF NEW IS NOT DISTINCT FROM OLD THEN
        -- heartbeat-only or no-op: no new version, no notification
        NEW.heartbeat_at := v_heartbeat_at;
        RETURN NEW;
    END IF;
    NEW.heartbeat_at := v_heartbeat_at;
    NEW.version := OLD.version + 1;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER chats_10_guard
BEFORE INSERT OR UPDATE ON chatd.chats
FOR EACH ROW EXECUTE FUNCTION chatd.chats_guard();

CREATE OR REPLACE TRIGGER chats_20_version
BEFORE UPDATE ON chatd.chats
FOR EACH ROW EXECUTE FUNCTION chatd.chats_version();
