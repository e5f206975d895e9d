ALTER TABLE chatd.chats
DROP CONSTRAINT chats_deleted_idle_check,
DROP COLUMN deleted_at;
