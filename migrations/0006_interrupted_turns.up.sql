-- 0006 interrupted turns and worker identity.
--
-- chats.interrupted_*: the turn that interrupt_chat, archive_chat,
-- send_message (busy_behavior interrupt) or promote_queued_message stopped
-- while it was running. save_interrupted_turn accepts the partial answer of
-- exactly that lease, once, billed at the model that ran it, and placed
-- after the messages that existed when it was stopped (see
-- docs/state-machine.md). NULL when no stopped turn may be saved.
ALTER TABLE chatd.chats
ADD COLUMN interrupted_lease bigint,
ADD COLUMN interrupted_model_config_id uuid REFERENCES chatd.model_configs (id),
ADD COLUMN interrupted_last_message_id bigint;

-- workers.login_role: the database login (session_user) that first
-- registered this worker id; another login cannot heartbeat, claim or
-- release under it (docs/security.md). NULL for rows registered before
-- this migration: the next login to use the id binds it.
ALTER TABLE chatd.workers
ADD COLUMN login_role text;
