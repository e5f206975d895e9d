-- Recovery of stale running chats and the stream-part janitor. Both are safe
-- to call from every worker at once (SKIP LOCKED, re-checked in the UPDATE).

-- A running chat is stale when its worker stopped sending heartbeats: the
-- worker's row in chatd.workers is older than settings.stale_after, or the
-- worker has no row and the chat was claimed (chats.heartbeat_at) longer
-- than stale_after ago (claimed before migration 0004, or the row was
-- deleted). A stale chat goes back to pending (due now), or, when the
-- current turn had streamed (a stream part under its lease) and was already
-- recovered settings.max_recoveries times, to error with a ChatError of kind
-- timeout. Only recoveries of turns that had streamed count (recoveries + 1):
-- a worker killed before the model answered says nothing about the turn, so
-- repeated kills or restarts never fail a healthy turn. The lease is bumped, so
-- the lost worker, should it still be alive, can write nothing. Returns how
-- many chats moved.
--
-- The stale workers are found first (a small table) and their rows locked
-- (SKIP LOCKED: a worker whose heartbeat or claim holds its row is alive,
-- and a concurrent recovery has it already); their running chats are then
-- found through chats_running_worker_idx. A heartbeat that arrives while a
-- recovery holds its row waits for it, then reports the recovered chats lost.
CREATE OR REPLACE FUNCTION chatd.recover_stale_chats()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_settings chatd.settings;
    v_workers text [];
    v_count integer;
BEGIN
    SELECT s.* INTO STRICT v_settings FROM chatd.settings AS s;
    -- re-checked on the locked row: a heartbeat that committed in between wins
    v_workers := ARRAY(
        SELECT w.id FROM chatd.workers AS w
        WHERE w.heartbeat_at < now() - v_settings.stale_after
        ORDER BY w.id
        FOR UPDATE SKIP LOCKED
    );
    WITH of_stale_workers AS (
        SELECT c.id FROM chatd.chats AS c
        WHERE c.status = 'running' AND c.worker_id = ANY (v_workers)
        ORDER BY c.id
        FOR UPDATE SKIP LOCKED
    ),
    without_worker AS (
        SELECT c.id FROM chatd.chats AS c
        WHERE c.status = 'running' AND c.heartbeat_at < now() - v_settings.stale_after
            AND NOT EXISTS (SELECT 1 FROM chatd.workers AS w WHERE w.id = c.worker_id)
        ORDER BY c.heartbeat_at, c.id
        FOR UPDATE SKIP LOCKED
    ),
    stale_ids AS (
        SELECT of_stale_workers.id FROM of_stale_workers
        UNION
        SELECT without_worker.id FROM without_worker
    ),
    stale AS (
        SELECT
            stale_ids.id,
            EXISTS (
                SELECT 1 FROM chatd.stream_parts AS p
                INNER JOIN chatd.chats AS sc ON sc.id = p.chat_id AND sc.lease = p.lease
                WHERE p.chat_id = stale_ids.id
            ) AS streamed
        FROM stale_ids
    )
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
                WHEN stale.streamed AND c.recoveries >= v_settings.max_recoveries THEN 'error'
                ELSE 'pending'
            END::chatd.chat_status,
            p_bump_lease => TRUE,
            p_last_error => CASE
                WHEN stale.streamed AND c.recoveries >= v_settings.max_recoveries THEN jsonb_build_object(
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
            END,
            p_attempt => c.attempt, p_recoveries => c.recoveries + stale.streamed::integer, p_retry_state => c.retry_state
        ) AS r
    )
    FROM stale
    WHERE c.id = stale.id
        -- re-checked on the locked row: the turn may have ended meanwhile
        AND c.status = 'running';
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;

-- Drops stream parts of ended turns (the chat is no longer running under
-- the part's lease) older than settings.stream_part_retention, and the rows
-- of workers silent for an hour (or stale_after, if longer) that run no
-- chat, so chatd.workers stays small (a worker that comes back creates its
-- row again). Returns how many stream parts it deleted.
CREATE OR REPLACE FUNCTION chatd.janitor()
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_retention interval;
    v_stale_after interval;
    v_count integer;
BEGIN
    SELECT s.stream_part_retention, s.stale_after INTO STRICT v_retention, v_stale_after FROM chatd.settings AS s;
    DELETE FROM chatd.stream_parts AS p
    WHERE p.created_at <= now() - v_retention
        AND NOT EXISTS (
            SELECT 1 FROM chatd.chats AS c
            WHERE c.id = p.chat_id AND c.status = 'running' AND c.lease = p.lease
        );
    GET DIAGNOSTICS v_count = ROW_COUNT;
    -- SKIP LOCKED: a row a heartbeat, claim or recovery holds is left alone
    WITH gone AS (
        SELECT w.id FROM chatd.workers AS w
        WHERE w.heartbeat_at < now() - greatest(v_stale_after, interval '1 hour')
            AND NOT EXISTS (SELECT 1 FROM chatd.chats AS c WHERE c.status = 'running' AND c.worker_id = w.id)
        FOR UPDATE SKIP LOCKED
    )
    DELETE FROM chatd.workers AS w USING gone WHERE w.id = gone.id;
    RETURN v_count;
END
$$;
