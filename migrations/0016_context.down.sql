-- Reverts 0016. Summary messages stay as model-only system messages.
ALTER TABLE chatd.settings
DROP COLUMN compact_keep,
DROP COLUMN compact_threshold,
DROP COLUMN context_margin_tokens;

ALTER TABLE chatd.chats
DROP COLUMN summary_message_id;

DROP TRIGGER IF EXISTS messages_05_tokens ON chatd.messages;

ALTER TABLE chatd.messages
DROP COLUMN tokens,
DROP COLUMN summary_through_id;
