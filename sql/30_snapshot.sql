-- Read functions (for chatd_app): the subscriber's snapshot and chat lists.

-- A message as the application sees it (get_chat_snapshot,
-- get_messages_before): one JSON shape in one place.
CREATE OR REPLACE FUNCTION chatd._message_json(m chatd.messages)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT jsonb_build_object(
        'id', m.id,
        'role', m.role,
        'content', m.content,
        'visibility', m.visibility,
        'model_config_id', m.model_config_id,
        'input_tokens', m.input_tokens,
        'output_tokens', m.output_tokens,
        'reasoning_tokens', m.reasoning_tokens,
        'cache_read_tokens', m.cache_read_tokens,
        'cache_write_tokens', m.cache_write_tokens,
        'total_cost_micros', m.total_cost_micros,
        'runtime_ms', m.runtime_ms,
        'finish_reason', m.finish_reason,
        'usage_estimated', m.usage_estimated,
        'created_by', m.created_by,
        'created_at', m.created_at
    )
$$;

-- The stream parts a snapshot carries: the part batches of turn p_lease of
-- the chat, in seq order, at most 1000 batches and about 4 MB (always at
-- least one); more is true when more remain (read them with
-- get_stream_parts). None when p_running is false. On a hot standby (a read
-- replica) none either, and more is p_running: stream_parts is UNLOGGED, so
-- a standby has no rows for it and refuses even to plan a query on it; the
-- caller reads the parts from the primary. plpgsql, so that the query on
-- stream_parts is planned only where it runs.
CREATE OR REPLACE FUNCTION chatd._running_parts(p_chat_id uuid, p_lease bigint, p_running boolean)
RETURNS TABLE (parts jsonb, more boolean)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF NOT p_running OR pg_is_in_recovery() THEN
        RETURN QUERY SELECT '[]'::jsonb, coalesce(p_running, FALSE);
        RETURN;
    END IF;
    RETURN QUERY
    SELECT
        coalesce(jsonb_agg(jsonb_build_object('seq', sp.seq, 'parts', sp.parts) ORDER BY sp.seq)
            FILTER (WHERE sp.total <= 4194304 OR sp.n = 1), '[]'::jsonb),
        coalesce(bool_or(sp.total > 4194304 AND sp.n > 1), FALSE) OR count(*) = 1000
    FROM (
        SELECT
            limited.seq,
            limited.parts,
            sum(octet_length(limited.parts::text)) OVER (ORDER BY limited.seq) AS total,
            row_number() OVER (ORDER BY limited.seq) AS n
        FROM (
            SELECT p.seq, p.parts FROM chatd.stream_parts AS p
            WHERE p.chat_id = p_chat_id AND p.lease = p_lease
            ORDER BY p.seq
            LIMIT 1000
        ) AS limited
    ) AS sp;
END
$$;

-- One consistent read (a single statement, so a single MVCC snapshot) of
-- everything a subscriber needs after LISTEN: the chat row with its version,
-- the user-visible, non-deleted messages with id > p_after_message_id, the
-- queue, the sub-agent chats (children, _children_json: a "child"
-- notification says one changed) and the stream parts of the running
-- turn. Apply afterwards only
-- notifications with a version greater than "version" (parts: lease equal
-- to parts_lease and seq greater than the last seq here, or a newer lease).
--
-- Paged, so no chat is too big to read: at most p_max_messages (1 to 1000)
-- messages and about 4 MB of their content (always at least one message);
-- messages_more is true when more remain (call again after the last id).
-- p_newest: the page is the NEWEST such messages instead (a view that opens
-- on the end of a long chat); messages_more is false and before is the id
-- to pass to get_messages_before for the next older page (NULL when no
-- older message exists; without p_newest, before is always NULL).
-- Stream parts likewise: at most 1000 batches and 4 MB (parts_more; read
-- the rest with get_stream_parts). On a read replica (hot standby) the
-- parts are never included: parts is empty and parts_more is true while the
-- chat runs (see _running_parts); read them from the primary.
-- The sub-agent chats of a chat, for its snapshot: the newest 100 live
-- (not deleted) children, oldest first, each {id, title, status, archived,
-- version, parent_tool_call_id (the spawn_agent call it answers; NULL for a
-- child the application created), error (kind and retryable of its
-- last_error), created_at}. One index range scan (chats_parent_idx).
CREATE OR REPLACE FUNCTION chatd._children_json(p_chat_id uuid)
RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
        'id', k.id,
        'title', k.title,
        'status', k.status,
        'archived', k.archived,
        'version', k.version,
        'parent_tool_call_id', k.parent_tool_call_id,
        'error', chatd._error_hint(k.last_error),
        'created_at', k.created_at
    ) ORDER BY k.created_at, k.id), '[]'::jsonb)
    FROM (
        SELECT c.* FROM chatd.chats AS c
        WHERE c.parent_chat_id = p_chat_id AND c.deleted_at IS NULL
        ORDER BY c.created_at DESC, c.id DESC
        LIMIT 100
    ) AS k
$$;

-- The newest page of a chat's user-visible, non-deleted messages with id >
-- p_after_id: at most p_max_messages and about p_max_bytes of content
-- (always at least one message), newest first. An index range scan on
-- messages (chat_id, id) read backwards: constant time in chat size.
CREATE OR REPLACE FUNCTION chatd._newest_page(
    p_chat_id uuid, p_after_id bigint, p_max_messages integer, p_max_bytes bigint
)
RETURNS TABLE (id bigint)
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT sized.id
    FROM (
        SELECT
            limited.id,
            sum(octet_length(limited.content::text)) OVER (ORDER BY limited.id DESC) AS total,
            row_number() OVER (ORDER BY limited.id DESC) AS n
        FROM (
            SELECT m.id, m.content
            FROM chatd.messages AS m
            WHERE m.chat_id = p_chat_id
                AND m.id > coalesce(p_after_id, 0)
                AND NOT m.deleted
                AND m.visibility IN ('both', 'user')
            ORDER BY m.chat_id DESC, m.id DESC  -- messages_chat_idx, backwards
            LIMIT p_max_messages
        ) AS limited
    ) AS sized
    WHERE sized.total <= p_max_bytes OR sized.n = 1
$$;

DROP FUNCTION IF EXISTS chatd.get_chat_snapshot(uuid, uuid, bigint);
DROP FUNCTION IF EXISTS chatd.get_chat_snapshot(uuid, uuid, bigint, integer);
CREATE OR REPLACE FUNCTION chatd.get_chat_snapshot(
    p_user_id uuid,
    p_chat_id uuid,
    p_after_message_id bigint DEFAULT 0,
    p_max_messages integer DEFAULT 200,
    p_newest boolean DEFAULT FALSE
)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF p_max_messages IS NULL OR p_max_messages NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'get_chat_snapshot: invalid max_messages %: expected 1 to 1000', p_max_messages
            USING ERRCODE = 'CD007';
    END IF;
    PERFORM chatd._authorized_chat(p_user_id, p_chat_id, FALSE);
    SELECT jsonb_build_object(
        'chat', jsonb_build_object(
            'id', c.id,
            'organization_id', c.organization_id,
            'owner_id', c.owner_id,
            'workspace_id', c.workspace_id,
            'parent_chat_id', c.parent_chat_id,
            'root_chat_id', c.root_chat_id,
            'parent_tool_call_id', c.parent_tool_call_id,
            'agents', c.agents,
            'title', c.title,
            'status', c.status,
            'client_type', c.client_type,
            'model_config_id', c.model_config_id,
            'archived', c.archived,
            'worker_id', c.worker_id,
            'lease', c.lease,
            'attempt', c.attempt,
            'next_attempt_at', c.next_attempt_at,
            'retry_state', c.retry_state,
            'last_error', c.last_error,
            'version', c.version,
            'created_at', c.created_at,
            'updated_at', c.updated_at
        ),
        'version', c.version,
        'last_message_id', (SELECT max(m.id) FROM chatd.messages AS m WHERE m.chat_id = c.id),
        'messages', page.messages,
        'messages_more', NOT p_newest AND chatd._messages_after(c.id, coalesce(page.last_id, p_after_message_id), FALSE),
        'before', CASE WHEN p_newest AND EXISTS (
            SELECT 1 FROM chatd.messages AS o
            WHERE o.chat_id = c.id AND o.id < page.first_id AND o.id > coalesce(p_after_message_id, 0)
                AND NOT o.deleted AND o.visibility IN ('both', 'user')
        ) THEN page.first_id END,
        'queue', coalesce((
            SELECT jsonb_agg(jsonb_build_object(
                'id', q.id,
                'position', q.position,
                'content', q.content,
                'model_config_id', q.model_config_id,
                'created_by', q.created_by,
                'created_at', q.created_at
            ) ORDER BY q.position)
            FROM chatd.queued_messages AS q WHERE q.chat_id = c.id
        ), '[]'::jsonb),
        'children', chatd._children_json(c.id),
        'parts_lease', CASE WHEN c.status = 'running' THEN c.lease END,
        'parts', parts.parts,
        'parts_more', parts.more
    )
    INTO v_result
    FROM chatd.chats AS c
    CROSS JOIN LATERAL (
        SELECT
            coalesce(jsonb_agg(chatd._message_json(m) ORDER BY m.id), '[]'::jsonb) AS messages,
            max(m.id) AS last_id,
            min(m.id) AS first_id
        FROM (
            SELECT p.id FROM chatd._message_page(c.id, p_after_message_id, FALSE, p_max_messages, 4194304, TRUE) AS p
            WHERE NOT p_newest
            UNION ALL
            SELECT n.id FROM chatd._newest_page(c.id, p_after_message_id, p_max_messages, 4194304) AS n
            WHERE p_newest
        ) AS p
        INNER JOIN chatd.messages AS m ON m.id = p.id
        -- messages_chat_idx bounds the join to this chat (a join with the
        -- function's rows may be planned as a hash join over the messages)
        WHERE m.chat_id = c.id
    ) AS page
    CROSS JOIN LATERAL chatd._running_parts(c.id, c.lease, c.status = 'running') AS parts
    WHERE c.id = p_chat_id;
    RETURN v_result;
END
$$;

-- One page of a chat's messages going back in time, for a client that
-- shows the newest messages first and loads older ones on demand: the
-- user-visible, non-deleted messages with id < p_before_message_id (NULL:
-- the newest), at most p_limit (1 to 1000, else CD007) of them, oldest
-- first within the page. Returns {messages, more (older ones exist),
-- before (the id to pass for the next older page; NULL when none)}. The
-- authorization of get_chat_snapshot (CD001, CD002). An index range scan
-- on messages (chat_id, id) read backwards: constant time in chat size.
CREATE OR REPLACE FUNCTION chatd.get_messages_before(
    p_user_id uuid,
    p_chat_id uuid,
    p_before_message_id bigint DEFAULT NULL,
    p_limit integer DEFAULT 50
)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_result jsonb;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'get_messages_before: invalid limit %: expected 1 to 1000', p_limit
            USING ERRCODE = 'CD007';
    END IF;
    PERFORM chatd._authorized_chat(p_user_id, p_chat_id, FALSE);
    SELECT jsonb_build_object(
        'messages', coalesce(jsonb_agg(chatd._message_json(page.m) ORDER BY (page.m).id)
            FILTER (WHERE page.n <= p_limit), '[]'::jsonb),
        'more', count(*) > p_limit,
        'before', CASE WHEN count(*) > p_limit THEN min((page.m).id) FILTER (WHERE page.n <= p_limit) END
    )
    INTO v_result
    FROM (
        SELECT m, row_number() OVER (ORDER BY m.id DESC) AS n
        FROM chatd.messages AS m
        WHERE m.chat_id = p_chat_id
            AND (p_before_message_id IS NULL OR m.id < p_before_message_id)
            AND NOT m.deleted
            AND m.visibility IN ('both', 'user')
        ORDER BY m.id DESC
        LIMIT p_limit + 1
    ) AS page;
    RETURN v_result;
END
$$;

-- Streamed parts of running turns, for one user and any number of that
-- user's chats at once (one round trip serves every subscription of a busy
-- client): for each i, the part batches of chat p_chat_ids[i] under lease
-- p_leases[i] with seq > p_after_seqs[i], in seq order, at most p_limit (1
-- to 1000) per chat. The authorized way to read a stream: a "parts"
-- notification only says that (lease, seq) exists, since any login can
-- LISTEN to (and NOTIFY on) a chat's channel. Every chat is checked like
-- in every application function: CD001 / CD002 for the first chat the user
-- may not read (nothing is returned then); a deleted chat is not found.
CREATE OR REPLACE FUNCTION chatd.get_stream_parts(
    p_user_id uuid,
    p_chat_ids uuid[],
    p_leases bigint[],
    p_after_seqs integer[],
    p_limit integer DEFAULT 100
)
RETURNS TABLE (chat_id uuid, lease bigint, seq integer, parts jsonb)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_denied uuid;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'get_stream_parts: invalid limit %: expected 1 to 1000', p_limit USING ERRCODE = 'CD007';
    END IF;
    IF cardinality(p_chat_ids) IS NULL OR cardinality(p_chat_ids) > 1000
        OR cardinality(p_leases) IS DISTINCT FROM cardinality(p_chat_ids)
        OR cardinality(p_after_seqs) IS DISTINCT FROM cardinality(p_chat_ids) THEN
        RAISE EXCEPTION 'get_stream_parts: expected 1 to 1000 chat ids, as many leases and after_seqs'
            USING ERRCODE = 'CD007';
    END IF;
    -- the auth boundary, for every chat at once; _authorized_chat then
    -- raises the exact error for the first chat that fails it
    SELECT r.chat_id INTO v_denied
    FROM unnest(p_chat_ids) AS r (chat_id)
    LEFT JOIN chatd.chats AS c ON c.id = r.chat_id
    WHERE c.id IS NULL OR c.deleted_at IS NOT NULL OR p_user_id IS NULL OR c.owner_id <> p_user_id OR NOT EXISTS (
        SELECT 1 FROM chatd.organization_members AS om
        WHERE om.organization_id = c.organization_id AND om.user_id = p_user_id
    )
    LIMIT 1;
    IF FOUND THEN
        PERFORM chatd._authorized_chat(p_user_id, v_denied, FALSE);
        RAISE EXCEPTION 'user % may not act on chat %', p_user_id, v_denied USING ERRCODE = 'CD002';
    END IF;
    RETURN QUERY
    SELECT r.chat_id, sp.lease, sp.seq, sp.parts
    FROM unnest(p_chat_ids, p_leases, p_after_seqs) AS r (chat_id, lease, after_seq)
    CROSS JOIN LATERAL (
        SELECT p.lease, p.seq, p.parts FROM chatd.stream_parts AS p
        WHERE p.chat_id = r.chat_id AND p.lease = r.lease AND p.seq > coalesce(r.after_seq, -1)
        ORDER BY p.seq
        LIMIT p_limit
    ) AS sp
    ORDER BY r.chat_id, sp.lease, sp.seq;
END
$$;

-- The acting user's chats (owned, not deleted, in organizations they belong to),
-- ordered by updated_at descending, then id ascending. Paging cursor:
-- (p_before, p_before_id) = (updated_at, id) of the last row of the previous
-- page; the next page starts strictly after it in that order, so chats
-- sharing an updated_at (an archived tree shares one) are never skipped.
-- p_before alone (no p_before_id) keeps its old meaning: updated_at <
-- p_before.
DROP FUNCTION IF EXISTS chatd.list_chats(uuid, uuid, boolean, integer, timestamptz);
CREATE OR REPLACE FUNCTION chatd.list_chats(
    p_user_id uuid,
    p_organization_id uuid DEFAULT NULL,
    p_include_archived boolean DEFAULT FALSE,
    p_limit integer DEFAULT 50,
    p_before timestamptz DEFAULT NULL,
    p_before_id uuid DEFAULT NULL
)
RETURNS TABLE (
    id uuid,
    organization_id uuid,
    workspace_id uuid,
    parent_chat_id uuid,
    root_chat_id uuid,
    title text,
    status chatd.chat_status,
    client_type chatd.client_type,
    model_config_id uuid,
    archived boolean,
    last_error jsonb,
    version bigint,
    created_at timestamptz,
    updated_at timestamptz
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'invalid limit %: expected 1 to 1000', p_limit USING ERRCODE = 'CD007';
    END IF;
    IF p_organization_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM chatd.organization_members AS om
        WHERE om.organization_id = p_organization_id AND om.user_id = p_user_id
    ) THEN
        RAISE EXCEPTION 'user % is not a member of organization %', p_user_id, p_organization_id
            USING ERRCODE = 'CD002';
    END IF;
    RETURN QUERY
    SELECT
        c.id, c.organization_id, c.workspace_id, c.parent_chat_id, c.root_chat_id, c.title,
        c.status, c.client_type, c.model_config_id, c.archived, c.last_error, c.version,
        c.created_at, c.updated_at
    FROM chatd.chats AS c
    WHERE c.owner_id = p_user_id
        AND c.deleted_at IS NULL
        AND (p_organization_id IS NULL OR c.organization_id = p_organization_id)
        AND (p_include_archived OR NOT c.archived)
        AND (
            p_before IS NULL OR c.updated_at < p_before
            OR (p_before_id IS NOT NULL AND c.updated_at = p_before AND c.id > p_before_id)
        )
        AND EXISTS (
            SELECT 1 FROM chatd.organization_members AS om
            WHERE om.organization_id = c.organization_id AND om.user_id = p_user_id
        )
    ORDER BY c.updated_at DESC, c.id
    LIMIT p_limit;
END
$$;
