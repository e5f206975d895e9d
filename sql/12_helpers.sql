-- Internal helpers of the state machine functions: input validation,
-- authorization (the auth boundary of every application function), channel
-- names, small JSON shapes, and the turn columns of a chat whose turn stops
-- (_turn_reset). Names start with an underscore: they are not part of the
-- application or worker interface.

-- Normalizes message content: a JSON string becomes one text part; an
-- array must hold objects with a known part type, text parts with a
-- non-empty string text (reasoning parts with a string text). Anything else
-- raises CD007.
CREATE OR REPLACE FUNCTION chatd._content(p_content jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_part jsonb;
BEGIN
    IF p_content IS NULL THEN
        RAISE EXCEPTION 'invalid content: content is required' USING ERRCODE = 'CD007';
    END IF;
    IF octet_length(p_content::text) > 1048576 THEN
        RAISE EXCEPTION 'invalid content: % bytes, at most 1 MB (1048576 bytes)', octet_length(p_content::text)
            USING ERRCODE = 'CD007';
    END IF;
    IF jsonb_typeof(p_content) = 'string' THEN
        IF length(p_content #>> '{}') = 0 THEN
            RAISE EXCEPTION 'invalid content: empty text' USING ERRCODE = 'CD007';
        END IF;
        RETURN jsonb_build_array(jsonb_build_object('type', 'text', 'text', p_content #>> '{}'));
    END IF;
    IF jsonb_typeof(p_content) <> 'array' THEN
        RAISE EXCEPTION 'invalid content: expected an array of parts or a string, got %', jsonb_typeof(p_content)
            USING ERRCODE = 'CD007';
    END IF;
    IF jsonb_array_length(p_content) = 0 THEN
        RAISE EXCEPTION 'invalid content: no parts' USING ERRCODE = 'CD007';
    END IF;
    FOR v_part IN SELECT e.value FROM jsonb_array_elements(p_content) AS e (value) LOOP
        IF jsonb_typeof(v_part) <> 'object'
            OR coalesce(v_part ->> 'type', '') NOT IN ('text', 'reasoning', 'tool-call', 'tool-result', 'file') THEN
            RAISE EXCEPTION 'invalid content: part % has no known type (text, reasoning, tool-call, tool-result, file)',
                left(v_part::text, 200)
                USING ERRCODE = 'CD007';
        END IF;
        IF v_part ->> 'type' IN ('text', 'reasoning') AND jsonb_typeof(v_part -> 'text') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'invalid content: a % part needs a string "text"', v_part ->> 'type'
                USING ERRCODE = 'CD007';
        END IF;
        IF v_part ->> 'type' = 'text' AND v_part ->> 'text' = '' THEN
            RAISE EXCEPTION 'invalid content: empty text part' USING ERRCODE = 'CD007';
        END IF;
    END LOOP;
    RETURN p_content;
END
$$;

-- An enabled model config of an enabled provider: the given one, or the
-- default when p_model_config_id is NULL. CD007 otherwise.
CREATE OR REPLACE FUNCTION chatd._usable_model(p_model_config_id uuid)
RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    IF p_model_config_id IS NULL THEN
        SELECT m.id INTO v_id
        FROM chatd.model_configs AS m JOIN chatd.providers AS p ON p.id = m.provider_id
        WHERE m.is_default AND m.enabled AND p.enabled;
        IF v_id IS NULL THEN
            RAISE EXCEPTION 'invalid model: no model given and no enabled default model' USING ERRCODE = 'CD007';
        END IF;
        RETURN v_id;
    END IF;
    SELECT m.id INTO v_id
    FROM chatd.model_configs AS m JOIN chatd.providers AS p ON p.id = m.provider_id
    WHERE m.id = p_model_config_id AND m.enabled AND p.enabled;
    IF v_id IS NULL THEN
        RAISE EXCEPTION 'invalid model: model config % is unknown or disabled', p_model_config_id
            USING ERRCODE = 'CD007';
    END IF;
    RETURN v_id;
END
$$;

-- The auth boundary: the acting user may act on a chat when they own it and
-- are a member of its organization. Locks the chat row (FOR UPDATE) when
-- p_lock; raises CD001 (no such chat, or a deleted one) or CD002
-- (forbidden).
CREATE OR REPLACE FUNCTION chatd._authorized_chat(p_user_id uuid, p_chat_id uuid, p_lock boolean)
RETURNS chatd.chats
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
BEGIN
    IF p_lock THEN
        SELECT * INTO v_chat FROM chatd.chats WHERE id = p_chat_id FOR UPDATE;
    ELSE
        SELECT * INTO v_chat FROM chatd.chats WHERE id = p_chat_id;
    END IF;
    -- a deleted chat (chatd.delete_chat) is not found, for everyone
    IF NOT FOUND OR v_chat.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'chat % not found', p_chat_id USING ERRCODE = 'CD001';
    END IF;
    IF p_user_id IS NULL
        OR v_chat.owner_id <> p_user_id
        OR NOT EXISTS (
            SELECT 1 FROM chatd.organization_members AS om
            WHERE om.organization_id = v_chat.organization_id AND om.user_id = p_user_id
        ) THEN
        RAISE EXCEPTION 'user % may not act on chat %', p_user_id, p_chat_id USING ERRCODE = 'CD002';
    END IF;
    RETURN v_chat;
END
$$;

CREATE OR REPLACE FUNCTION chatd._chat_channel(p_chat_id uuid)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN 'chatd_chat_' || p_chat_id::text;
END
$$;

CREATE OR REPLACE FUNCTION chatd._user_channel(p_user_id uuid)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN 'chatd_user_' || p_user_id::text;
END
$$;

-- A ChatError trimmed for notification payloads: message and detail cut to
-- 300 characters, only scalar fields kept.
CREATE OR REPLACE FUNCTION chatd._short_error(p_error jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN CASE WHEN p_error IS NULL THEN NULL ELSE jsonb_strip_nulls(jsonb_build_object(
        'message', left(p_error ->> 'message', 300),
        'kind', p_error ->> 'kind',
        'provider', left(p_error ->> 'provider', 100),
        'retryable', p_error -> 'retryable',
        'status_code', p_error -> 'status_code',
        'detail', left(p_error ->> 'detail', 300)
    )) END;
END
$$;

-- True when the chat row version with this xmin and updated_at has a
-- version given by the current (top-level) transaction: chats_20_version
-- sets updated_at to now() with every new version, and a heartbeat-only or
-- no-op write keeps both version and updated_at. Such a chat already has a
-- version newer than any committed snapshot, so a touch is not needed; a
-- chat this transaction wrote without a new version still needs one.
DROP FUNCTION IF EXISTS chatd._written_by_this_xact(xid);
CREATE OR REPLACE FUNCTION chatd._versioned_by_this_xact(p_xmin xid, p_updated_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN p_xmin = pg_current_xact_id()::xid AND p_updated_at = now();
END
$$;

-- Validates a ChatError (DESIGN.md section 6) and returns it: an object of
-- at most 64 KB with a string "message", a known "kind" (generic,
-- overloaded, rate_limit, timeout, startup_timeout, auth, config,
-- usage_limit, content_filter, missing_key), a JSON boolean "retryable",
-- and optionally "provider" and "detail" (string or null) and
-- "status_code" (integer or null); no other keys. CD007 otherwise.
CREATE OR REPLACE FUNCTION chatd._chat_error(p_error jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_key text;
BEGIN
    IF jsonb_typeof(p_error) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'invalid ChatError: expected an object' USING ERRCODE = 'CD007';
    END IF;
    IF octet_length(p_error::text) > 65536 THEN
        RAISE EXCEPTION 'invalid ChatError: % bytes, at most 64 KB (65536 bytes)', octet_length(p_error::text)
            USING ERRCODE = 'CD007';
    END IF;
    IF jsonb_typeof(p_error -> 'message') IS DISTINCT FROM 'string' THEN
        RAISE EXCEPTION 'invalid ChatError: "message" must be a string' USING ERRCODE = 'CD007';
    END IF;
    IF jsonb_typeof(p_error -> 'kind') IS DISTINCT FROM 'string'
        OR p_error ->> 'kind' NOT IN (
            'generic', 'overloaded', 'rate_limit', 'timeout', 'startup_timeout', 'auth', 'config',
            'usage_limit', 'content_filter', 'missing_key', 'step_limit', 'context_length'
        ) THEN
        RAISE EXCEPTION 'invalid ChatError: unknown kind %', left(p_error ->> 'kind', 100)
            USING ERRCODE = 'CD007',
                  HINT = 'kinds: generic, overloaded, rate_limit, timeout, startup_timeout, auth, config, '
                      || 'usage_limit, content_filter, missing_key, step_limit, context_length';
    END IF;
    IF jsonb_typeof(p_error -> 'retryable') IS DISTINCT FROM 'boolean' THEN
        RAISE EXCEPTION 'invalid ChatError: "retryable" must be true or false' USING ERRCODE = 'CD007';
    END IF;
    IF coalesce(jsonb_typeof(p_error -> 'provider'), 'null') NOT IN ('string', 'null')
        OR coalesce(jsonb_typeof(p_error -> 'detail'), 'null') NOT IN ('string', 'null') THEN
        RAISE EXCEPTION 'invalid ChatError: "provider" and "detail" must be strings or null' USING ERRCODE = 'CD007';
    END IF;
    IF coalesce(jsonb_typeof(p_error -> 'status_code'), 'null') NOT IN ('number', 'null')
        OR (jsonb_typeof(p_error -> 'status_code') = 'number'
            AND (p_error ->> 'status_code')::numeric <> trunc((p_error ->> 'status_code')::numeric)) THEN
        RAISE EXCEPTION 'invalid ChatError: "status_code" must be an integer or null' USING ERRCODE = 'CD007';
    END IF;
    SELECT k INTO v_key FROM jsonb_object_keys(p_error) AS k
    WHERE k NOT IN ('message', 'kind', 'retryable', 'provider', 'status_code', 'detail')
    LIMIT 1;
    IF v_key IS NOT NULL THEN
        RAISE EXCEPTION 'invalid ChatError: unknown key %', left(v_key, 100) USING ERRCODE = 'CD007';
    END IF;
    RETURN p_error;
END
$$;

-- One page of a chat's history, oldest first: the ids (and content sizes,
-- bytes of the content as JSON text) of the non-deleted messages after
-- p_after_id that the model (p_for_model) or the user sees, at most
-- p_max_messages of them and at most p_max_bytes of content in all. With
-- p_at_least_one the first message is always in the page, whatever its
-- size (callers that return rows need progress); without it a page may be
-- empty, so a caller that aggregates the page into one jsonb value stays
-- far below jsonb's 256 MB limit whatever the chat holds. Only the
-- messages of the page are read in full (the LIMIT comes first).
CREATE OR REPLACE FUNCTION chatd._message_page(
    p_chat_id uuid,
    p_after_id bigint,
    p_for_model boolean,
    p_max_messages integer,
    p_max_bytes bigint,
    p_at_least_one boolean
)
RETURNS TABLE (id bigint, bytes bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT sized.id, sized.bytes
    FROM (
        SELECT
            candidates.id,
            candidates.bytes,
            sum(candidates.bytes) OVER (ORDER BY candidates.id) AS total,
            row_number() OVER (ORDER BY candidates.id) AS n
        FROM (
            SELECT limited.id, octet_length(limited.content::text)::bigint AS bytes
            FROM (
                SELECT m.id, m.content
                FROM chatd.messages AS m
                WHERE m.chat_id = p_chat_id
                    AND m.id > coalesce(p_after_id, 0)
                    AND NOT m.deleted
                    AND m.visibility IN (
                        'both', CASE WHEN p_for_model THEN 'model' ELSE 'user' END::chatd.message_visibility
                    )
                    -- summaries reach the model only as the window's head (sql/38_context.sql)
                    AND m.summary_through_id IS NULL
                ORDER BY m.chat_id, m.id  -- messages_chat_idx order: never the primary key's
                LIMIT p_max_messages
            ) AS limited
        ) AS candidates
    ) AS sized
    WHERE sized.total <= p_max_bytes OR (p_at_least_one AND sized.n = 1)
    ORDER BY sized.id
$$;

-- True when the chat has messages of the kind _message_page pages through
-- after p_after_id.
CREATE OR REPLACE FUNCTION chatd._messages_after(p_chat_id uuid, p_after_id bigint, p_for_model boolean)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    -- the first such id, in messages_chat_idx order, not EXISTS: the planner
    -- drops an EXISTS's ORDER BY, and then a plan for "any row will do" may
    -- scan a whole long chat for a row that is not there (115 ms at 10^6)
    SELECT (
        SELECT m.id FROM chatd.messages AS m
        WHERE m.chat_id = p_chat_id
            AND m.id > coalesce(p_after_id, 0)
            AND NOT m.deleted
            AND m.visibility IN (
                'both', CASE WHEN p_for_model THEN 'model' ELSE 'user' END::chatd.message_visibility
            )
            AND m.summary_through_id IS NULL
        ORDER BY m.chat_id, m.id
        LIMIT 1
    ) IS NOT NULL
$$;

-- The id of the chat's newest message (deleted or not, any visibility), or
-- NULL. Read before a call inserts the next turn's message, it names the
-- last message of the turn being stopped (chats.interrupted_last_message_id).
CREATE OR REPLACE FUNCTION chatd._last_message_id(p_chat_id uuid)
RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT max(m.id) FROM chatd.messages AS m WHERE m.chat_id = p_chat_id
$$;

-- The one home of "reset the turn": p_chat (the locked row, as it is before
-- the UPDATE) with its turn stopped and every turn column set, for one
-- UPDATE that writes them all, always in this form:
--     UPDATE chatd.chats AS c
--     SET (
--         status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
--         next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
--         model_config_id
--     ) = (
--         SELECT r.status, r.worker_id, ... (the same columns)
--         FROM chatd._turn_reset(c, ...) AS r
--     )
-- The chat goes to p_status with no worker and no heartbeat, due at
-- p_next_attempt_at (now), and by default with a fresh turn ahead: attempt
-- and recoveries 0, no retry state, last_error p_last_error, model
-- p_model_config_id (NULL: the chat's). A caller that keeps the turn going
-- later (record_failure, release_chats, recover_stale_chats) passes the
-- counters it keeps or sets. p_bump_lease: the lease grows, so the stopped
-- turn's worker can write nothing more. Without it a running turn is
-- recorded as interrupted (chats.interrupted_*: its lease, its model, and
-- p_turn_last_message_id, the chat's last message before the caller
-- inserted the next turn's; NULL: read now), so its worker may save the
-- partial answer once (save_interrupted_turn). p_status NULL: there is no
-- turn to stop, p_chat comes back unchanged.
CREATE OR REPLACE FUNCTION chatd._turn_reset(
    p_chat chatd.chats,
    p_status chatd.chat_status,
    p_bump_lease boolean DEFAULT FALSE,
    p_last_error jsonb DEFAULT NULL,
    p_model_config_id uuid DEFAULT NULL,
    p_turn_last_message_id bigint DEFAULT NULL,
    p_attempt integer DEFAULT 0,
    p_recoveries integer DEFAULT 0,
    p_retry_state jsonb DEFAULT NULL,
    p_next_attempt_at timestamptz DEFAULT now()
)
RETURNS chatd.chats
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats := p_chat;
BEGIN
    IF p_status IS NULL THEN
        RETURN v_chat;
    END IF;
    IF p_bump_lease THEN
        v_chat.lease := p_chat.lease + 1;
    ELSIF p_chat.status = 'running' THEN
        v_chat.interrupted_lease := p_chat.lease;
        v_chat.interrupted_model_config_id := p_chat.model_config_id;
        v_chat.interrupted_last_message_id := coalesce(
            p_turn_last_message_id, chatd._last_message_id(p_chat.id)
        );
    END IF;
    v_chat.status := p_status;
    v_chat.worker_id := NULL;
    v_chat.heartbeat_at := NULL;
    v_chat.attempt := p_attempt;
    v_chat.recoveries := p_recoveries;
    v_chat.retry_state := p_retry_state;
    v_chat.last_error := p_last_error;
    v_chat.next_attempt_at := p_next_attempt_at;
    v_chat.model_config_id := coalesce(p_model_config_id, p_chat.model_config_id);
    RETURN v_chat;
END
$$;
