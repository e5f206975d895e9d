-- 0016 context windows (issue 14, DESIGN.md section 11, docs/context.md).
--
-- messages.summary_through_id: set on a summary message (role system,
-- visibility model, written by chatd.commit_summary): the newest message id
-- it covers. NULL on every other message.
-- chats.summary_message_id: the chat's newest summary (NULL: none), so a
-- claim finds it by primary key instead of searching the history.
--
-- settings: context_margin_tokens (kept free below the window for the
-- estimate's error), compact_threshold (compaction runs when the history
-- after the newest summary passes this share of the window) and
-- compact_keep (the share of the window that stays unsummarized).
--
-- Both ADD COLUMNs are nullable without a default, the settings ones have
-- constant defaults: no table rewrite, only a brief ACCESS EXCLUSIVE lock
-- (the migrator's lock_timeout applies). No index: nothing looks
-- summaries up but by chats.summary_message_id.
ALTER TABLE chatd.messages
ADD COLUMN summary_through_id bigint,
-- the message's tokens in a prompt (chatd._message_tokens), kept by the
-- trigger messages_05_tokens (sql/38_context.sql) on every insert and
-- content change; NULL on rows older than this migration, which readers
-- compute on the fly instead (no backfill: nothing to run on a big table)
ADD COLUMN tokens bigint;

ALTER TABLE chatd.chats
ADD COLUMN summary_message_id bigint;

ALTER TABLE chatd.settings
ADD COLUMN context_margin_tokens integer NOT NULL DEFAULT 1024 CHECK (context_margin_tokens >= 0),
ADD COLUMN compact_threshold real NOT NULL DEFAULT 0.7 CHECK (compact_threshold > 0 AND compact_threshold <= 1),
ADD COLUMN compact_keep real NOT NULL DEFAULT 0.3 CHECK (compact_keep > 0 AND compact_keep < 1);
