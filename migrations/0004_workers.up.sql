-- 0004 workers: liveness per worker instead of per chat. A worker's
-- heartbeat refreshes its one row here (a small HOT update) instead of
-- rewriting every chat it runs; recover_stale_chats() finds the stale
-- workers first, then their running chats through chats_running_worker_idx.
-- chats.heartbeat_at stays: it is set when a turn is claimed, and covers
-- running chats whose worker has no row (claimed before this migration, or
-- the row was deleted). See docs/state-machine.md.
CREATE TABLE chatd.workers (
    id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 200),
    -- no index on heartbeat_at: its update must stay HOT
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz NOT NULL DEFAULT now()
);

-- recovery: the running chats of a stale worker
CREATE INDEX chats_running_worker_idx ON chatd.chats (worker_id)
WHERE status = 'running';
