-- Undo 0004: the workers table and the running-chats-by-worker index.
DROP INDEX chatd.chats_running_worker_idx;
DROP TABLE chatd.workers;
