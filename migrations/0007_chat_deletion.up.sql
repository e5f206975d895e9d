-- 0007 chat deletion: chats.deleted_at, set by chatd.delete_chat
-- (sql/22_app_delete.sql). Deletion is soft, so spend history survives: the
-- chat row stays (owner, organization, tree), its messages stay with their
-- costs, token counts, model configs and timestamps, but their content, the
-- title and the error text are wiped, and the queue and stream parts are
-- removed. Every application function treats a deleted chat as not found
-- (CD001); the guard keeps a deleted chat's row frozen. NULL: not deleted.
ALTER TABLE chatd.chats
ADD COLUMN deleted_at timestamptz,
-- a deleted chat is archived, idle (never pending or running) and has no
-- worker, so no claim, recovery or release can ever select it
ADD CONSTRAINT chats_deleted_idle_check CHECK (
    deleted_at IS NULL OR (archived AND status NOT IN ('pending', 'running'))
);
