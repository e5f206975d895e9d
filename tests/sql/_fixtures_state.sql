-- State-machine test helpers, loaded into the template after _fixtures.sql.
-- They drive chats through the real functions; only force_status bypasses
-- the guard (a quick way to reach requires_action without a tool step).

-- Claims exactly this pending chat for p_worker; returns the new lease.
CREATE FUNCTION chatd_test.claim(p_chat uuid, p_worker text DEFAULT 'w1') RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_lease bigint;
BEGIN
    -- only this chat is due at -infinity, so it is the oldest due chat
    UPDATE chatd.chats SET next_attempt_at = now()
    WHERE next_attempt_at = '-infinity' AND status = 'pending' AND id <> p_chat;
    UPDATE chatd.chats SET next_attempt_at = '-infinity' WHERE id = p_chat AND status = 'pending';
    SELECT a.lease INTO v_lease FROM chatd.acquire_chats(p_worker, 1) AS a WHERE a.chat_id = p_chat;
    IF v_lease IS NULL THEN
        RAISE EXCEPTION 'chatd_test.claim: chat % was not claimed', p_chat;
    END IF;
    RETURN v_lease;
END
$$;

-- A chat of a new user in a new organization, in the given status, reached
-- through the state-machine functions (requires_action, awaiting_agents:
-- forced).
CREATE FUNCTION chatd_test.chat_in(
    p_status chatd.chat_status,
    p_owner uuid DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_owner uuid := coalesce(p_owner, chatd_test.user(chatd_test.org()));
    v_chat uuid := chatd_test.chat(v_owner);
    v_lease bigint;
BEGIN
    IF p_status = 'pending' THEN
        RETURN v_chat;
    END IF;
    IF p_status IN ('requires_action', 'awaiting_agents') THEN
        PERFORM chatd_test.force_status(v_chat, p_status);
        RETURN v_chat;
    END IF;
    v_lease := chatd_test.claim(v_chat);
    IF p_status = 'waiting' THEN
        PERFORM chatd.finish_turn(v_chat, v_lease, '"done"');
    ELSIF p_status = 'error' THEN
        PERFORM chatd.record_failure(v_chat, v_lease, '{"message": "boom", "kind": "generic", "retryable": false}');
    END IF;
    RETURN v_chat;
END
$$;

-- Sets a status with the guard trigger disabled (test-only escape hatch).
CREATE FUNCTION chatd_test.force_status(p_chat uuid, p_status chatd.chat_status) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    ALTER TABLE chatd.chats DISABLE TRIGGER chats_10_guard;
    UPDATE chatd.chats SET status = p_status, worker_id = NULL WHERE id = p_chat;
    ALTER TABLE chatd.chats ENABLE TRIGGER chats_10_guard;
END
$$;

-- Makes a worker look stale: its last heartbeat (its row in chatd.workers)
-- is p_age old. Every running chat of that worker becomes recoverable.
CREATE FUNCTION chatd_test.make_stale(p_worker_id text, p_age interval DEFAULT '1 hour') RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE chatd.workers SET heartbeat_at = now() - p_age WHERE id = p_worker_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chatd_test.make_stale: worker % has no row', p_worker_id;
    END IF;
END
$$;

CREATE FUNCTION chatd_test.status(p_chat uuid) RETURNS chatd.chat_status
LANGUAGE sql AS $$
    SELECT status FROM chatd.chats WHERE id = p_chat
$$;

CREATE FUNCTION chatd_test.owner(p_chat uuid) RETURNS uuid
LANGUAGE sql AS $$
    SELECT owner_id FROM chatd.chats WHERE id = p_chat
$$;
