-- Recovery of stale running chats and the stream-part janitor. Both are safe
-- to call from every worker at once (SKIP LOCKED, re-checked in the UPDATE).

-- A running chat whose heartbeat is older than settings.stale_after lost its
-- worker: it goes back to pending (due now) with recoveries + 1, or, when the
-- current turn was already recovered settings.max_recoveries times, to error
-- with a ChatError of kind timeout. The lease is bumped, so the lost worker,
-- should it still be alive, can write nothing. Returns how many chats moved.
CREATE OR REPLACE FUNCTION chatd.recover_stale_chats()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_settings chatd.settings;
    v_count integer;
BEGIN
    SELECT s.* INTO STRICT v_settings FROM chatd.settings AS s;
    WITH stale AS (
        SELECT c.id FROM chatd.chats AS c
        WHERE c.status = 'running' AND c.heartbeat_at < now() - v_settings.stale_after
        ORDER BY c.heartbeat_at, c.id
        FOR UPDATE SKIP LOCKED
    )
    UPDATE chatd.chats AS c
    SET status = CASE
            WHEN c.recoveries >= v_settings.max_recoveries THEN 'error'
            ELSE 'pending'
        END::chatd.chat_status,
        recoveries = c.recoveries + 1,
        worker_id = NULL,
        heartbeat_at = NULL,
        lease = c.lease + 1,
        next_attempt_at = now(),
        last_error = CASE
            WHEN c.recoveries >= v_settings.max_recoveries THEN jsonb_build_object(
                'message', format(
                    'chat %s: worker %s stopped sending heartbeats; the turn was recovered %s times, giving up',
                    c.id, c.worker_id, c.recoveries
                ),
                'kind', 'timeout',
                'provider', NULL,
                'retryable', FALSE,
                'status_code', NULL,
                'detail', format('stale_after %s, max_recoveries %s', v_settings.stale_after,
                    v_settings.max_recoveries)
            )
            ELSE c.last_error
        END
    FROM stale
    WHERE c.id = stale.id
        -- re-checked on the locked row: a heartbeat may have won the race
        AND c.status = 'running'
        AND c.heartbeat_at < now() - v_settings.stale_after;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Drops stream parts of ended turns (the chat is no longer running under
-- the part's lease) older than settings.stream_part_retention. Returns how
-- many rows it deleted.
CREATE OR REPLACE FUNCTION chatd.janitor()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_retention interval;
    v_count integer;
BEGIN
    SELECT s.stream_part_retention INTO STRICT v_retention FROM chatd.settings AS s;
    DELETE FROM chatd.stream_parts AS p
    WHERE p.created_at <= now() - v_retention
        AND NOT EXISTS (
            SELECT 1 FROM chatd.chats AS c
            WHERE c.id = p.chat_id AND c.status = 'running' AND c.lease = p.lease
        );
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
