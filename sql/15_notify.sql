-- Notifications, sent by triggers in the same transaction as the change
-- (DESIGN.md section 5, docs/notifications.md). Channels:
--
--   chatd_wake              a chat became runnable (workers)
--   chatd_chat_<chat id>    status, message, queue, retry, error, parts,
--                           title, archived, deleted (subscribers of a chat;
--                           deleted: chatd.delete_chat, or a row deleted
--                           directly), child (a sub-agent chat of this
--                           chat was created or changed)
--   chatd_user_<owner id>   created, status, title, archived, deleted (lists)
--
-- Payloads are small JSON hints that carry no content, not even streamed
-- parts: PostgreSQL lets every login LISTEN on and NOTIFY to every channel,
-- so a payload is public and forgeable. One notification per statement
-- per chat and channel: the chat trigger is per row (one row per chat per
-- statement); the message and queue triggers send payloads that describe
-- the chat, not the row, so the rows of one statement fold into one.
--
-- Versions: every notification carries the chat's version after the
-- change. Message and queue changes touch the chat (version + 1) unless the
-- chat row was already written by the same transaction, so a subscriber
-- applies exactly the notifications whose version is greater than the
-- version of its snapshot.

-- The chat and owner payloads are built inside chats_notify (their only
-- caller), not by helper functions: a helper call per notification, with
-- its search_path switch and the row passed as a composite, cost about a
-- third of the trigger, which runs for every chat of every claim and
-- finish (docs/benchmarks.md, "Dispatch, fourth pass").
DROP FUNCTION IF EXISTS chatd._chat_payload(text, chatd.chats);
DROP FUNCTION IF EXISTS chatd._owner_payload(text, chatd.chats);

-- The hint on a parent's channel that one of its sub-agent chats was
-- created or changed status, archived flag or title (a snapshot of the
-- parent lists its children): kind child, the parent's id as chat_id, and
-- the child's id, status and version. It carries no parent version (the
-- parent did not change); subscribers re-read the parent's snapshot.
CREATE OR REPLACE FUNCTION chatd._child_payload(p_child chatd.chats)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN jsonb_build_object(
        'kind', 'child',
        'chat_id', p_child.parent_chat_id,
        'child_chat_id', p_child.id,
        'status', p_child.status,
        'archived', p_child.archived,
        'child_version', p_child.version
    );
END
$$;

-- The error of a retry or error notification: its kind and whether it is
-- retried, never its message or detail (they may quote the conversation;
-- subscribers read last_error through get_chat_snapshot).
CREATE OR REPLACE FUNCTION chatd._error_hint(p_error jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN CASE WHEN p_error IS NULL THEN NULL ELSE jsonb_strip_nulls(jsonb_build_object(
        'kind', left(p_error ->> 'kind', 50),
        'retryable', CASE WHEN jsonb_typeof(p_error -> 'retryable') = 'boolean' THEN p_error -> 'retryable' END
    )) END;
END
$$;

-- Payloads, every field of the chat row after the change (before it, for a
-- DELETE):
--   chat channel   {kind, chat_id, version, status, archived, worker_id,
--                  lease, last_message_id} (kinds below), or {kind deleted,
--                  chat_id, version} for a row deleted outright
--   owner channel  {kind, chat_id, version, status, archived,
--                  parent_chat_id, organization_id}
--   parent channel _child_payload
--   chatd_wake     {chat_id}
CREATE OR REPLACE FUNCTION chatd.chats_notify()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_kind text;
    v_owner_kind text;
    v_payload jsonb;
    v_old chatd.chats;
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify(chatd._chat_channel(OLD.id),
            jsonb_build_object('kind', 'deleted', 'chat_id', OLD.id, 'version', OLD.version)::text);
        NEW := OLD;  -- the owner notification below describes the row as it was
        v_owner_kind := 'deleted';
    ELSIF TG_OP = 'INSERT' THEN
        v_owner_kind := 'created';
    -- UPDATE (the trigger fires only when version changed)
    ELSIF OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL THEN
        -- chatd.delete_chat: the fields of a status hint (no content), so
        -- the worker of a running chat sees its lease bumped and stops now
        v_kind := 'deleted';
        v_owner_kind := 'deleted';
    ELSIF OLD.archived <> NEW.archived THEN
        v_kind := 'archived';
        v_owner_kind := 'archived';
    ELSIF OLD.status <> NEW.status AND NEW.status = 'error' THEN
        v_kind := 'error';
        v_owner_kind := 'status';
    ELSIF OLD.status <> NEW.status AND NEW.status = 'requires_action' THEN
        v_kind := 'requires_action';
        v_owner_kind := 'status';
    ELSIF OLD.status = 'running' AND NEW.status = 'pending' AND NEW.attempt > OLD.attempt THEN
        v_kind := 'retry';
        v_owner_kind := 'status';
    ELSIF OLD.status <> NEW.status THEN
        v_kind := 'status';
        v_owner_kind := 'status';
    ELSIF OLD.title <> NEW.title THEN
        v_kind := 'title';
        v_owner_kind := 'title';
    ELSE
        -- a touch (version only) by a message or queue trigger notifies
        -- through that trigger; any other change is a status-kind hint
        v_old := OLD;
        v_old.version := NEW.version;
        v_old.updated_at := NEW.updated_at;
        v_old.heartbeat_at := NEW.heartbeat_at;
        IF v_old IS NOT DISTINCT FROM NEW THEN
            RETURN NULL;
        END IF;
        v_kind := 'status';
    END IF;

    IF v_kind IS NOT NULL THEN
        v_payload := jsonb_build_object(
            'kind', v_kind,
            'chat_id', NEW.id,
            'version', NEW.version,
            'status', NEW.status,
            'archived', NEW.archived,
            'worker_id', NEW.worker_id,
            'lease', NEW.lease,
            'last_message_id', (SELECT max(m.id) FROM chatd.messages AS m WHERE m.chat_id = NEW.id)
        );
        IF v_kind = 'retry' THEN
            v_payload := v_payload || jsonb_build_object(
                'attempt', NEW.attempt,
                'delay_ms', NEW.retry_state -> 'delay_ms',
                'retrying_at', NEW.retry_state -> 'retrying_at',
                'error', chatd._error_hint(NEW.last_error)
            );
        ELSIF v_kind = 'error' THEN
            v_payload := v_payload || jsonb_build_object('error', chatd._error_hint(NEW.last_error));
        ELSIF v_kind = 'requires_action' THEN
            -- ids only (at most 20 of at most 100 characters: the payload
            -- stays small); names, inputs and outputs are read through the
            -- snapshot
            v_payload := v_payload || (
                SELECT jsonb_build_object(
                    'tool_call_ids', coalesce(jsonb_agg(p.tool_call_id) FILTER (WHERE p.n <= 20), '[]'),
                    'tool_calls_pending', count(*)
                )
                FROM (
                    SELECT t.tool_call_id, row_number() OVER () AS n FROM chatd._pending_tool_calls(NEW.id) AS t
                ) AS p
            );
        END IF;
        PERFORM pg_notify(chatd._chat_channel(NEW.id), v_payload::text);
    END IF;

    IF v_owner_kind IS NOT NULL THEN
        PERFORM pg_notify(chatd._user_channel(NEW.owner_id), jsonb_build_object(
            'kind', v_owner_kind, 'chat_id', NEW.id, 'version', NEW.version, 'status', NEW.status,
            'archived', NEW.archived, 'parent_chat_id', NEW.parent_chat_id, 'organization_id', NEW.organization_id
        )::text);
    END IF;
    IF NEW.parent_chat_id IS NOT NULL AND v_owner_kind IN ('created', 'status', 'archived', 'title') THEN
        PERFORM pg_notify(chatd._chat_channel(NEW.parent_chat_id), chatd._child_payload(NEW)::text);
    END IF;
    IF NEW.status = 'pending' AND NOT NEW.archived AND v_owner_kind IS DISTINCT FROM 'deleted'
        AND (TG_OP = 'INSERT' OR OLD.status <> 'pending' OR OLD.archived) THEN
        PERFORM pg_notify('chatd_wake', jsonb_build_object('chat_id', NEW.id)::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER chats_30_notify_insert
AFTER INSERT ON chatd.chats
FOR EACH ROW EXECUTE FUNCTION chatd.chats_notify();

CREATE OR REPLACE TRIGGER chats_30_notify_update
AFTER UPDATE ON chatd.chats
FOR EACH ROW WHEN (old.version IS DISTINCT FROM new.version)
EXECUTE FUNCTION chatd.chats_notify();

CREATE OR REPLACE TRIGGER chats_30_notify_delete
AFTER DELETE ON chatd.chats
FOR EACH ROW EXECUTE FUNCTION chatd.chats_notify();

-- Touches the chat unless this transaction already gave it a new version
-- (a heartbeat-only write does not count: see _versioned_by_this_xact), and
-- returns
-- the chat row (NULL fields when the chat is gone, or deleted by an earlier
-- transaction: chats_guard drops every update of a deleted chat, and the
-- callers treat both alike). A returned version 1
-- means the chat was created by this transaction: its "created"
-- notification covers its first messages.
CREATE OR REPLACE FUNCTION chatd._touch_chat(p_chat_id uuid)
RETURNS chatd.chats
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
BEGIN
    -- versioned by this transaction (the common case at commit: the caller
    -- wrote the chat after its messages): one read, no touch
    SELECT c.* INTO v_chat FROM chatd.chats AS c
    WHERE c.id = p_chat_id AND chatd._versioned_by_this_xact(c.xmin, c.updated_at);
    IF FOUND THEN
        RETURN v_chat;
    END IF;
    UPDATE chatd.chats AS c SET version = c.version + 1
    WHERE c.id = p_chat_id AND NOT chatd._versioned_by_this_xact(c.xmin, c.updated_at)
    RETURNING c.* INTO v_chat;
    RETURN v_chat;  -- NULL fields: the chat is gone
END
$$;

-- Message and queue triggers are per row, but their payloads describe the
-- chat after the statement (version, newest message id, queue length), not
-- the row: all rows of one statement yield the same payload, which
-- PostgreSQL delivers once per transaction (identical payloads on one
-- channel are folded). So a statement notifies once per chat.
--
-- The message trigger is deferred to commit: a transaction that also
-- writes the chat row (finish_turn, send_message, edit_message: most of
-- them, after their messages) then needs no touch of its own, one chat-row
-- update fewer (never HOT: updated_at is in chats_owner_idx). Its
-- notification then carries the chat's final version and newest message,
-- like the status notification of that write. When the chat row was not
-- written (save_interrupted_turn, a tool round), the touch happens at
-- commit.
-- SECURITY DEFINER: at commit the trigger runs as the committing login (a
-- worker or app role with no rights on chats), no longer inside the
-- SECURITY DEFINER function that wrote the message; a trigger function
-- cannot be called directly.
CREATE OR REPLACE FUNCTION chatd.messages_notify()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.deleted, NEW.content, NEW.visibility) IS NOT DISTINCT FROM
        (OLD.deleted, OLD.content, OLD.visibility) THEN
        RETURN NULL;
    END IF;
    -- An inserted message is already named by the notification of a chat
    -- write that came after it in this transaction (the reply before the
    -- status change of a finish, the message before the start of a turn):
    -- that write bumped the version (updated_at is now()) and its status
    -- notification read last_message_id after this insert (a later command
    -- id). One notification per turn fewer; an edit's soft deletes (UPDATE)
    -- still notify, since subscribers must re-read for them.
    IF TG_OP = 'INSERT' THEN
        PERFORM FROM chatd.chats AS c
        WHERE
            c.id = NEW.chat_id
            AND chatd._versioned_by_this_xact(c.xmin, c.updated_at)
            AND c.cmin::text::bigint > (SELECT m.cmin::text::bigint FROM chatd.messages AS m WHERE m.id = NEW.id);
        IF FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    v_chat := chatd._touch_chat(NEW.chat_id);
    -- gone or deleted (delete_chat wiping it: "deleted" said it all), or
    -- created by this transaction: "created" covers its first messages
    IF v_chat.id IS NULL OR v_chat.deleted_at IS NOT NULL OR (TG_OP = 'INSERT' AND v_chat.version = 1) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify(chatd._chat_channel(NEW.chat_id), jsonb_build_object(
        'kind', 'message',
        'op', lower(TG_OP),
        'chat_id', NEW.chat_id,
        'version', v_chat.version,
        'status', v_chat.status,
        'last_message_id', (SELECT max(m.id) FROM chatd.messages AS m WHERE m.chat_id = NEW.chat_id)
    )::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS messages_notify_insert ON chatd.messages;
DROP TRIGGER IF EXISTS messages_notify_update ON chatd.messages;

DROP TRIGGER IF EXISTS messages_notify ON chatd.messages;
CREATE CONSTRAINT TRIGGER messages_notify
AFTER INSERT OR UPDATE ON chatd.messages
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION chatd.messages_notify();

CREATE OR REPLACE FUNCTION chatd.queue_notify()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat_id uuid;
    v_chat chatd.chats;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_chat_id := OLD.chat_id;
    ELSE
        v_chat_id := NEW.chat_id;
    END IF;
    v_chat := chatd._touch_chat(v_chat_id);
    IF v_chat.id IS NULL OR v_chat.deleted_at IS NOT NULL THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify(chatd._chat_channel(v_chat_id), jsonb_build_object(
        'kind', 'queue',
        'chat_id', v_chat_id,
        'version', v_chat.version,
        'status', v_chat.status,
        'queue_length', (SELECT count(*) FROM chatd.queued_messages AS q WHERE q.chat_id = v_chat_id)
    )::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS queued_messages_notify_insert ON chatd.queued_messages;
DROP TRIGGER IF EXISTS queued_messages_notify_update ON chatd.queued_messages;
DROP TRIGGER IF EXISTS queued_messages_notify_delete ON chatd.queued_messages;

CREATE OR REPLACE TRIGGER queued_messages_notify
AFTER INSERT OR UPDATE OR DELETE ON chatd.queued_messages
FOR EACH ROW EXECUTE FUNCTION chatd.queue_notify();

-- A hint that the running turn published parts: {kind, chat_id, lease,
-- seq}, never the parts themselves. Any login may LISTEN on (and NOTIFY to)
-- any channel, so subscribers read the parts through the authorized
-- chatd.get_stream_parts (docs/security.md, "Notifications").
CREATE OR REPLACE FUNCTION chatd.stream_parts_notify()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    PERFORM pg_notify(chatd._chat_channel(NEW.chat_id), jsonb_build_object(
        'kind', 'parts', 'chat_id', NEW.chat_id, 'lease', NEW.lease, 'seq', NEW.seq
    )::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER stream_parts_notify
AFTER INSERT ON chatd.stream_parts
FOR EACH ROW EXECUTE FUNCTION chatd.stream_parts_notify();
