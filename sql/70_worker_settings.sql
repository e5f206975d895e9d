-- Settings the worker reads at start-up, in milliseconds so every client
-- reads them the same way. The worker role cannot read tables directly.

CREATE OR REPLACE FUNCTION chatd.worker_settings()
RETURNS TABLE (heartbeat_interval_ms bigint, startup_timeout_ms bigint, stale_after_ms bigint)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT
        (extract(EPOCH FROM s.heartbeat_interval) * 1000)::bigint,
        (extract(EPOCH FROM s.startup_timeout) * 1000)::bigint,
        (extract(EPOCH FROM s.stale_after) * 1000)::bigint
    FROM chatd.settings AS s
$$;
