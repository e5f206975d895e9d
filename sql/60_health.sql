-- Health of a chatd database, for `chatd check` and dashboards
-- (docs/cli.md); executable by chatd_reporting. A function, not a view: a
-- view would depend on chatd.workers and block `chatd migrate down 3`.
--
-- One row. live_workers: workers whose heartbeat is newer than
-- settings.stale_after. stuck_chats: running chats past their lease (their
-- worker's heartbeat, or for a worker without a row the claim, is older than
-- stale_after); recover_stale_chats() moves such chats within a recover
-- interval, so stuck chats that stay mean no live worker is recovering.
-- oldest_stuck_since: the oldest such heartbeat (NULL when none).
CREATE OR REPLACE FUNCTION chatd.health()
RETURNS TABLE (live_workers bigint, stuck_chats bigint, oldest_stuck_since timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    WITH bounds AS (
        SELECT now() - s.stale_after AS stale_before
        FROM chatd.settings AS s
    ),

    stuck AS (
        SELECT coalesce(w.heartbeat_at, c.heartbeat_at) AS since
        FROM chatd.chats AS c
        CROSS JOIN bounds AS b
        LEFT JOIN chatd.workers AS w ON c.worker_id = w.id
        WHERE
            c.status = 'running'
            AND coalesce(w.heartbeat_at, c.heartbeat_at) < b.stale_before
    )

    SELECT
        (
            SELECT count(*) FROM chatd.workers AS w
            WHERE w.heartbeat_at >= b.stale_before
        ) AS live_workers,
        (SELECT count(*) FROM stuck) AS stuck_chats,
        (SELECT min(stuck.since) FROM stuck) AS oldest_stuck_since
    FROM bounds AS b;
$$;
