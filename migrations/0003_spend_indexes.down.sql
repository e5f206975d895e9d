DROP INDEX IF EXISTS chatd.messages_created_idx;
