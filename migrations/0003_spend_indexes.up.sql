-- 0003 spend indexes: the spend reporting views (sql/55_spend_views.sql) read
-- the messages of the current period across all chats. The per-user spend
-- of an admission uses chats_owner_idx and messages_cost_idx from 0001.
CREATE INDEX IF NOT EXISTS messages_created_idx ON chatd.messages (created_at);
