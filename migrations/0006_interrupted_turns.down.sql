ALTER TABLE chatd.workers
DROP COLUMN login_role;

ALTER TABLE chatd.chats
DROP COLUMN interrupted_last_message_id,
DROP COLUMN interrupted_model_config_id,
DROP COLUMN interrupted_lease;
