-- Worker functions (for chatd_worker): claim, heartbeat, stream, finish,
-- fail, release. Every write names (chat_id, lease): a worker whose lease was
-- lost (recovered, interrupted, re-claimed, released) changes nothing and
-- gets SQLSTATE CD004. See docs/state-machine.md.

-- The model a worker needs for a chat's model config. PL/pgSQL, not SQL:
-- with its pinned search_path a SQL function is never inlined, and its
-- query was parsed and planned again at every claim (about 0.24 ms); a
-- PL/pgSQL function keeps its plan for the session.
CREATE OR REPLACE FUNCTION chatd._model_json(p_model_config_id uuid)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
        'model_config_id', m.id,
        'model', m.model,
        'max_output_tokens', m.max_output_tokens,
        'thinking_budget_tokens', m.thinking_budget_tokens,
        'provider', jsonb_build_object(
            'name', p.name, 'kind', p.kind, 'base_url', p.base_url, 'api_key_env', p.api_key_env,
            'auth_header', p.auth_header, 'stream_usage', coalesce(p.stream_usage, TRUE),
            'api', coalesce(p.api, CASE WHEN p.kind = 'anthropic' THEN 'messages' ELSE 'chat_completions' END)
        )
    )
    FROM chatd.model_configs AS m JOIN chatd.providers AS p ON p.id = m.provider_id
    WHERE m.id = p_model_config_id);
END
$$;

-- The lock-and-fence of every worker call on one chat: the chat row,
-- locked, once its fence (the lease) holds. CD001 when the chat is gone,
-- CD004 (naming p_action) when the fence fails. p_mode says which fence:
--   'running': running under p_lease (a write to the turn: publish_parts,
--       finish_turn, record_failure);
--   'stopped': not running, still under p_lease (no claim, edit, release
--       or recovery since the turn stopped: save_interrupted_turn);
--   'read': running under p_lease for worker p_worker_id, read without a
--       lock (turn_history);
--   'try': as 'running', but a failed fence (or an unknown chat) returns
--       NULL instead of raising (finish_turns reports those turns).
DROP FUNCTION IF EXISTS chatd._fenced_chat(uuid, bigint, text);
CREATE OR REPLACE FUNCTION chatd._fenced_chat(
    p_chat_id uuid, p_lease bigint, p_action text, p_mode text DEFAULT 'running', p_worker_id text DEFAULT NULL
)
RETURNS chatd.chats
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
BEGIN
    IF p_mode IS NULL OR p_mode NOT IN ('running', 'stopped', 'read', 'try') THEN
        RAISE EXCEPTION '_fenced_chat: unknown mode %', p_mode USING ERRCODE = 'CD007';
    END IF;
    IF p_mode = 'read' THEN
        SELECT * INTO v_chat FROM chatd.chats AS c WHERE c.id = p_chat_id;
    ELSE
        SELECT * INTO v_chat FROM chatd.chats AS c WHERE c.id = p_chat_id FOR UPDATE;
    END IF;
    IF v_chat.id IS NULL AND p_mode <> 'try' THEN
        RAISE EXCEPTION 'chat % not found', p_chat_id USING ERRCODE = 'CD001';
    END IF;
    IF v_chat.lease IS DISTINCT FROM p_lease
        OR (v_chat.status = 'running') IS DISTINCT FROM (p_mode <> 'stopped')
        OR p_mode = 'read' AND v_chat.worker_id IS DISTINCT FROM p_worker_id THEN
        IF p_mode = 'try' THEN
            RETURN NULL;
        ELSIF p_mode = 'read' THEN
            RAISE EXCEPTION 'chat %: lease % of worker % lost (chat is % under lease %), % refused',
                p_chat_id, p_lease, p_worker_id, v_chat.status, v_chat.lease, p_action
                USING ERRCODE = 'CD004';
        END IF;
        RAISE EXCEPTION 'chat %: lease % lost (chat is % under lease %), % refused',
            p_chat_id, p_lease, v_chat.status, v_chat.lease, p_action
            USING ERRCODE = 'CD004';
    END IF;
    RETURN v_chat;
END
$$;

-- Records that a worker is alive: inserts or refreshes its row in
-- chatd.workers (one small HOT update; heartbeat_at is in no index). This
-- row, not the chats, is what recover_stale_chats() checks for staleness.
-- A recovery holding the row of this worker (found stale) makes the caller
-- wait until it committed. A worker id belongs to the database login
-- (session_user) that registered it: another login gets CD002.
CREATE OR REPLACE FUNCTION chatd._worker_alive(p_worker_id text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_login text;
BEGIN
    IF p_worker_id IS NULL OR length(p_worker_id) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'invalid worker id %', p_worker_id USING ERRCODE = 'CD007';
    END IF;
    INSERT INTO chatd.workers AS w (id, login_role) VALUES (p_worker_id, session_user)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), login_role = coalesce(w.login_role, excluded.login_role)
    RETURNING w.login_role INTO v_login;
    IF v_login IS DISTINCT FROM session_user::text THEN
        RAISE EXCEPTION 'worker id % belongs to another database login', p_worker_id USING ERRCODE = 'CD002';
    END IF;
END
$$;

-- CD002 unless the worker id is free or registered by the current login
-- (session_user). Used where a worker acts without refreshing its row.
CREATE OR REPLACE FUNCTION chatd._check_worker_login(p_worker_id text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM chatd.workers AS w
        WHERE w.id = p_worker_id AND w.login_role IS DISTINCT FROM session_user::text AND w.login_role IS NOT NULL
    ) THEN
        RAISE EXCEPTION 'worker id % belongs to another database login', p_worker_id USING ERRCODE = 'CD002';
    END IF;
END
$$;

-- Claims up to p_limit runnable chats (pending, due, not archived), oldest
-- due first, skipping rows another worker is claiming. Each claim bumps the
-- lease. Returns what the turn needs: lease, attempt, model and what the
-- model sees: its context window (sql/38_context.sql; context: the window
-- as _context_window describes it, compact true when the worker must
-- summarize first), as messages: the system prompt and newest summary,
-- then the first page of the window's messages (oldest first: at most 200
-- messages and 4 MB of content, see _message_page), with history_complete
-- false when more remain: the worker reads the rest with turn_history. The
-- window is found walking back from the newest message, and no history is
-- aggregated whole, so a claim costs the same for a chat of 10 or 10^6
-- messages and no chat's size can fail the claim of another
-- (docs/state-machine.md, "Claiming and history"; docs/context.md). A due
-- chat whose model or provider is disabled is never handed out: it goes to
-- error (kind config, not retryable; chatd._fail_disabled_model_chats) and
-- the claim goes on with the other chats. tools: what the turn may call
-- (chatd._turn_tools; NULL for a chat without tools).
DROP FUNCTION IF EXISTS chatd.acquire_chats(text, integer);
CREATE FUNCTION chatd.acquire_chats(p_worker_id text, p_limit integer)
RETURNS TABLE (
    chat_id uuid, lease bigint, attempt integer, model jsonb, messages jsonb, history_complete boolean,
    tools jsonb, context jsonb
)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_disabled uuid[];
    v_ids uuid[];
BEGIN
    IF p_worker_id IS NULL OR length(p_worker_id) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'invalid worker id %', p_worker_id USING ERRCODE = 'CD007';
    END IF;
    IF p_limit IS NULL OR p_limit < 0 THEN
        RAISE EXCEPTION 'invalid limit %', p_limit USING ERRCODE = 'CD007';
    END IF;
    -- the worker of a claimed chat always has a row in chatd.workers; taken
    -- before any chat row, so a claim never waits on a chat while holding it
    PERFORM chatd._worker_alive(p_worker_id);
    v_disabled := chatd._fail_disabled_model_chats();
    -- The scan is a statement of its own: its cost depends on the limit and
    -- the disabled models, so PL/pgSQL keeps planning it for them (a generic
    -- plan sorted every due chat); the big statement below, which only
    -- looks chats up by id, keeps one cached plan.
    v_ids := ARRAY(
        WITH candidates AS (
            SELECT c.id
            FROM chatd.chats AS c
            WHERE c.status = 'pending' AND NOT c.archived AND c.next_attempt_at <= now()
                AND c.model_config_id <> ALL (v_disabled)
            -- chats_runnable_idx order, nothing more: with a tie-breaker the
            -- planner sorts every due chat under the row locks (LockRows sits
            -- between the LIMIT and the sort), a claim linear in the backlog
            -- (20 ms at 30,000 pending); ties go in index order
            ORDER BY c.next_attempt_at
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        )
        SELECT candidates.id FROM candidates
    );
    RETURN QUERY
    WITH claimed AS (
        UPDATE chatd.chats AS c
        SET status = 'running',
            worker_id = p_worker_id,
            lease = c.lease + 1,
            started_at = now(),
            heartbeat_at = now()
        WHERE c.id = ANY (v_ids)
        RETURNING
            c.id, c.lease, c.attempt, c.model_config_id, c.next_attempt_at, c.summary_message_id,
            c.tools, c.mcp_servers, c.agents
    ),
    -- once per model, not per chat (a claim's chats mostly share a few);
    -- MATERIALIZED: a CTE referenced once is otherwise inlined, and the
    -- join then called _model_json for every claimed chat
    models AS MATERIALIZED (
        SELECT
            m.id,
            chatd._model_json(m.id) AS model,
            cardinality(m.mcp_servers) > 0 OR m.agents AS may_use_tools
        FROM chatd.model_configs AS m
        WHERE m.id IN (SELECT claimed.model_config_id FROM claimed)
    )
    SELECT
        cl.id,
        cl.lease,
        cl.attempt,
        md.model,
        head.messages || page.messages,
        -- NOT chatd._messages_after, written out like the page below
        (
            SELECT m.id FROM chatd.messages AS m
            WHERE m.chat_id = cl.id AND m.id > coalesce(page.last_id, win.after_id, 0)
                AND NOT m.deleted AND m.visibility IN ('both', 'model') AND m.summary_through_id IS NULL
            ORDER BY m.chat_id, m.id
            LIMIT 1
        ) IS NULL,
        -- a chat with no client tools, MCP servers or agents, on a model
        -- with none either, has no tools (what _turn_tools would say)
        CASE
            WHEN jsonb_array_length(cl.tools) > 0 OR cardinality(cl.mcp_servers) > 0 OR cl.agents
                OR md.may_use_tools
                THEN chatd._turn_tools(cl.id)
        END,
        ctx.w
    FROM claimed AS cl
    INNER JOIN models AS md ON md.id = cl.model_config_id
    -- A chat without a summary whose model-visible messages are at most 64
    -- and take at most compact_threshold of the budget is its own window:
    -- decided here, in this statement (its plan is cached), from the newest
    -- 65 messages; every other chat calls chatd._context_window, which
    -- gives the same answer for these (about 0.2 ms a claim saved on short
    -- chats, the common case).
    CROSS JOIN LATERAL (
        SELECT
            count(*) AS n,
            coalesce(sum(q.tokens), 0) AS total,
            min(q.id) AS first_id,
            (array_agg(q.role ORDER BY q.id))[1] AS first_role,
            (array_agg(q.tokens ORDER BY q.id))[1] AS first_tokens,
            (
                SELECT m.context_limit::bigint - m.max_output_tokens - s.context_margin_tokens
                FROM chatd.model_configs AS m CROSS JOIN chatd.settings AS s WHERE m.id = cl.model_config_id
            ) AS room,
            (SELECT s.compact_threshold FROM chatd.settings AS s) AS threshold
        FROM (
            SELECT m.id, m.role, coalesce(m.tokens, greatest(  -- chatd._message_tokens, written out
                ceil(octet_length(m.content::text) / 4.0)::bigint + 4,
                CASE WHEN m.role = 'assistant' THEN coalesce(m.output_tokens, 0) - coalesce(m.reasoning_tokens, 0) END
            )) AS tokens
            FROM chatd.messages AS m
            WHERE m.chat_id = cl.id AND NOT m.deleted AND m.visibility IN ('both', 'model')
                AND m.summary_through_id IS NULL
            ORDER BY m.chat_id DESC, m.id DESC
            LIMIT 65
        ) AS q
    ) AS quick
    CROSS JOIN LATERAL (
        SELECT CASE
            WHEN cl.summary_message_id IS NULL AND quick.n <= 64
                AND quick.total <= quick.room * quick.threshold
                AND (quick.first_role IS DISTINCT FROM 'system' OR NOT EXISTS (
                    SELECT 1 FROM chatd.messages AS e WHERE e.chat_id = cl.id AND e.id < quick.first_id
                ))
            THEN (
                SELECT jsonb_build_object(
                    'system_id', CASE WHEN sys THEN quick.first_id END,
                    'summary_id', NULL,
                    'floor_id', CASE WHEN sys THEN quick.first_id ELSE 0 END,
                    'start_id', (
                        SELECT min(m.id) FROM chatd.messages AS m
                        WHERE m.chat_id = cl.id AND m.id > CASE WHEN sys THEN quick.first_id ELSE 0 END
                            AND NOT m.deleted AND m.visibility IN ('both', 'model')
                    ),
                    'budget_tokens', quick.room - CASE WHEN sys THEN quick.first_tokens ELSE 0 END,
                    'head_tokens', CASE WHEN sys THEN quick.first_tokens ELSE 0 END,
                    'window_tokens', quick.total - CASE WHEN sys THEN quick.first_tokens ELSE 0 END,
                    'compact', FALSE
                )
                FROM (SELECT coalesce(quick.first_role = 'system', FALSE) AS sys) AS f
            )
            ELSE chatd._context_window(cl.id)
        END AS w
        -- computed once per chat: flattened into the query, the window was
        -- built again (with its start_id subquery) at each of its uses
        OFFSET 0
    ) AS ctx
    CROSS JOIN LATERAL (
        SELECT coalesce((ctx.w ->> 'start_id')::bigint - 1, (ctx.w ->> 'floor_id')::bigint) AS after_id
    ) AS win
    -- the system prompt and the newest summary (the head of the window,
    -- written out: this statement's plan is cached, a SQL function's is made
    -- again at every call, about 90 us a claim)
    CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_agg(
            jsonb_build_object('id', m.id, 'role', m.role, 'content', m.content)
            || CASE WHEN m.summary_through_id IS NOT NULL
                THEN jsonb_build_object('summary', TRUE, 'summary_through_id', m.summary_through_id)
                ELSE '{}'::jsonb END
            ORDER BY m.id
        ), '[]'::jsonb) AS messages
        FROM chatd.messages AS m
        WHERE m.id IN ((ctx.w ->> 'system_id')::bigint, (ctx.w ->> 'summary_id')::bigint)
    ) AS head
    -- The first page of the window: chatd._message_page(cl.id,
    -- win.after_id, TRUE, 200, 4194304, FALSE), written out so that each
    -- message is read once and no function plan is started per chat (about
    -- 40 us a chat; tests/python/test_claim_page.py holds the two to the
    -- same answer)
    CROSS JOIN LATERAL (
        SELECT
            coalesce(
                jsonb_agg(jsonb_build_object('id', sized.id, 'role', sized.role, 'content', sized.content)
                    ORDER BY sized.id),
                '[]'::jsonb
            ) AS messages,
            max(sized.id) AS last_id
        FROM (
            SELECT
                limited.id,
                limited.role,
                limited.content,
                sum(octet_length(limited.content::text)::bigint) OVER (ORDER BY limited.id) AS total
            FROM (
                SELECT m.id, m.role, m.content
                FROM chatd.messages AS m
                WHERE m.chat_id = cl.id AND m.id > coalesce(win.after_id, 0)
                    AND NOT m.deleted AND m.visibility IN ('both', 'model') AND m.summary_through_id IS NULL
                ORDER BY m.chat_id, m.id  -- messages_chat_idx order: never the primary key's
                LIMIT 200
            ) AS limited
        ) AS sized
        WHERE sized.total <= 4194304
    ) AS page
    ORDER BY cl.next_attempt_at, cl.id;
END
$$;

-- Fails the due pending chats whose model config or provider is disabled:
-- -> error with a ChatError of kind config (not retryable), skipping rows
-- another transaction holds. Returns the disabled model config ids (empty,
-- and nothing scanned, when every model is usable), which acquire_chats
-- then excludes from its claim.
CREATE OR REPLACE FUNCTION chatd._fail_disabled_model_chats()
RETURNS uuid[]
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_disabled uuid[];
BEGIN
    v_disabled := ARRAY(
        SELECT m.id FROM chatd.model_configs AS m JOIN chatd.providers AS p ON p.id = m.provider_id
        WHERE NOT (m.enabled AND p.enabled)
    );
    IF cardinality(v_disabled) > 0 THEN
        WITH refused AS (
            SELECT c.id FROM chatd.chats AS c
            WHERE c.status = 'pending' AND NOT c.archived AND c.next_attempt_at <= now()
                AND c.model_config_id = ANY (v_disabled)
            ORDER BY c.root_chat_id, c.id <> c.root_chat_id, c.id
            FOR UPDATE SKIP LOCKED
        )
        UPDATE chatd.chats AS c
        SET (
            status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
            next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
            model_config_id
        ) = (
            SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state, r.last_error,
                r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id, r.interrupted_last_message_id,
                r.model_config_id
            FROM chatd._turn_reset(
                c, 'error',
                p_last_error => (
                    SELECT jsonb_build_object(
                        'message', format('model %s (%s) is disabled: choose another model and send again',
                            m.display_name, m.model),
                        'kind', 'config',
                        'provider', p.name,
                        'retryable', FALSE,
                        'status_code', NULL,
                        'detail', CASE WHEN p.enabled THEN 'model config disabled' ELSE 'provider disabled' END
                    )
                    FROM chatd.model_configs AS m JOIN chatd.providers AS p ON p.id = m.provider_id
                    WHERE m.id = c.model_config_id
                )
            ) AS r
        )
        FROM refused
        WHERE c.id = refused.id AND c.status = 'pending';
    END IF;
    RETURN v_disabled;
END
$$;

-- The rest of a claimed turn's history, after acquire_chats' first page:
-- the messages the model sees with id > p_after_id, oldest first, at most
-- p_limit (1 to 1000) of them and about 8 MB of content (always at least
-- one message). An empty result means the history is complete. Rows, not
-- one aggregate: no page is bounded by jsonb's size limit. Fenced: only the
-- worker holding the turn under p_lease may read (CD004 otherwise, CD001
-- for an unknown chat); nothing is locked or written.
CREATE OR REPLACE FUNCTION chatd.turn_history(
    p_worker_id text,
    p_chat_id uuid,
    p_lease bigint,
    p_after_id bigint,
    p_limit integer DEFAULT 100
)
RETURNS TABLE (id bigint, role chatd.message_role, content jsonb, bytes bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'turn_history: invalid limit %: expected 1 to 1000', p_limit USING ERRCODE = 'CD007';
    END IF;
    PERFORM chatd._fenced_chat(p_chat_id, p_lease, 'turn_history', 'read', p_worker_id);
    RETURN QUERY
    SELECT m.id, m.role, m.content, p.bytes
    FROM chatd._message_page(p_chat_id, p_after_id, TRUE, p_limit, 8388608, TRUE) AS p
    INNER JOIN chatd.messages AS m ON m.id = p.id
    -- messages_chat_idx bounds the join to this chat (a join with the
    -- function's rows may be planned as a hash join over the messages)
    WHERE m.chat_id = p_chat_id
    ORDER BY m.id;
END
$$;

-- The worker is alive: refreshes its row in chatd.workers (one small HOT
-- update, whatever the number of chats it runs; no chat row is written).
-- Returns the given chats it no longer owns under the given lease (the
-- worker cancels those turns), read by primary key. Heartbeats bump no
-- version and notify nothing, except for the safety net: a running chat of
-- this worker that the heartbeat does not report, claimed longer than
-- settings.stale_after ago, is a chat the worker no longer runs (its turn
-- ended without writing a result); it goes back to pending, due now, lease
-- bumped, as release_chats does. SKIP LOCKED: a busy row waits for the next
-- heartbeat.
CREATE OR REPLACE FUNCTION chatd.heartbeat(p_worker_id text, p_chat_ids uuid[], p_leases bigint[])
RETURNS TABLE (chat_id uuid)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF cardinality(p_chat_ids) IS DISTINCT FROM cardinality(p_leases) THEN
        RAISE EXCEPTION 'heartbeat: % chat ids but % leases', cardinality(p_chat_ids), cardinality(p_leases)
            USING ERRCODE = 'CD007';
    END IF;
    PERFORM chatd._worker_alive(p_worker_id);
    WITH orphans AS (
        SELECT c.id FROM chatd.chats AS c
        WHERE c.status = 'running' AND c.worker_id = p_worker_id
            AND c.heartbeat_at < now() - (SELECT s.stale_after FROM chatd.settings AS s)
            AND c.id <> ALL (coalesce(p_chat_ids, '{}'))
        ORDER BY c.id
        FOR UPDATE SKIP LOCKED
    )
    UPDATE chatd.chats AS c
    SET status = 'pending', worker_id = NULL, heartbeat_at = NULL, lease = c.lease + 1, next_attempt_at = now()
    FROM orphans
    WHERE c.id = orphans.id AND c.status = 'running' AND c.worker_id = p_worker_id;
    -- A new statement, so a new snapshot: a recovery this heartbeat waited
    -- for (on the worker row) is visible, and its chats are reported lost.
    RETURN QUERY
    WITH input AS (
        SELECT DISTINCT i.chat_id, i.lease FROM unnest(p_chat_ids, p_leases) AS i (chat_id, lease)
    ),
    -- one primary-key lookup per given chat: the lateral subquery names only
    -- the id (and OFFSET 0 keeps the other conditions out of it), so no
    -- plan can scan the worker's running chats instead
    owned AS (
        SELECT input.chat_id
        FROM input
        CROSS JOIN LATERAL (
            SELECT c.status, c.worker_id, c.lease FROM chatd.chats AS c
            WHERE c.id = input.chat_id
            OFFSET 0
        ) AS c
        WHERE c.lease = input.lease
            AND c.status = 'running'
            AND c.worker_id = p_worker_id
    )
    SELECT input.chat_id FROM input
    WHERE input.chat_id NOT IN (SELECT owned.chat_id FROM owned)
    ORDER BY input.chat_id;
END
$$;

-- Stores one batch of streamed partial output of the running turn and
-- notifies it on the chat's channel. Idempotent per (chat, lease, seq).
CREATE OR REPLACE FUNCTION chatd.publish_parts(p_chat_id uuid, p_lease bigint, p_seq integer, p_parts jsonb)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF p_seq IS NULL OR p_seq < 0 THEN
        RAISE EXCEPTION 'publish_parts: invalid seq %', p_seq USING ERRCODE = 'CD007';
    END IF;
    IF jsonb_typeof(p_parts) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'publish_parts: parts must be a JSON array' USING ERRCODE = 'CD007';
    END IF;
    IF octet_length(p_parts::text) > 262144 THEN
        RAISE EXCEPTION 'publish_parts: a batch of % bytes, at most 256 KB (262144 bytes)', octet_length(p_parts::text)
            USING ERRCODE = 'CD007';
    END IF;
    PERFORM chatd._fenced_chat(p_chat_id, p_lease, 'publish_parts');
    INSERT INTO chatd.stream_parts (chat_id, lease, seq, parts)
    VALUES (p_chat_id, p_lease, p_seq, p_parts)
    ON CONFLICT DO NOTHING;
END
$$;

-- The token counts of a turn's usage object {input_tokens, output_tokens,
-- reasoning_tokens, cache_read_tokens, cache_write_tokens} (absent or null:
-- NULL). CD007 unless usage is an object whose counts are integers between
-- 0 and chatd._max_tokens() (10^9): the SQL boundary, whatever the worker
-- checked, so cost arithmetic never sees nonsense.
CREATE OR REPLACE FUNCTION chatd._usage_tokens(
    p_chat_id uuid,
    p_usage jsonb,
    OUT o_input bigint,
    OUT o_output bigint,
    OUT o_reasoning bigint,
    OUT o_cache_read bigint,
    OUT o_cache_write bigint
)
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_usage jsonb := coalesce(p_usage, '{}'::jsonb);
BEGIN
    IF jsonb_typeof(v_usage) <> 'object' THEN
        RAISE EXCEPTION 'invalid usage for chat %: expected an object', p_chat_id USING ERRCODE = 'CD007';
    END IF;
    BEGIN
        o_input := (v_usage ->> 'input_tokens')::bigint;
        o_output := (v_usage ->> 'output_tokens')::bigint;
        o_reasoning := (v_usage ->> 'reasoning_tokens')::bigint;
        o_cache_read := (v_usage ->> 'cache_read_tokens')::bigint;
        o_cache_write := (v_usage ->> 'cache_write_tokens')::bigint;
    EXCEPTION WHEN invalid_text_representation OR numeric_value_out_of_range THEN
        RAISE EXCEPTION 'invalid usage for chat %: token counts must be integers between 0 and %',
            p_chat_id, chatd._max_tokens()
            USING ERRCODE = 'CD007';
    END;
    IF least(o_input, o_output, o_reasoning, o_cache_read, o_cache_write) < 0 THEN
        RAISE EXCEPTION 'invalid usage for chat %: negative token count', p_chat_id USING ERRCODE = 'CD007';
    END IF;
    IF greatest(o_input, o_output, o_reasoning, o_cache_read, o_cache_write) > chatd._max_tokens() THEN
        RAISE EXCEPTION 'invalid usage for chat %: a token count of % is above the cap of % tokens per bucket',
            p_chat_id, greatest(o_input, o_output, o_reasoning, o_cache_read, o_cache_write), chatd._max_tokens()
            USING ERRCODE = 'CD007';
    END IF;
END
$$;

-- The checked values of a turn's assistant message: its content (a
-- finished step, p_finish_reason given, may have none: []), token counts
-- and cost at the prices of p_chat.model_config_id, and whether the counts
-- are the worker's estimate (usage {"estimated": true}). CD007 for an
-- unknown finish reason, bad content, a negative runtime or bad usage.
-- The one home of these checks: _insert_turn_messages (one turn) and
-- finish_turns (a batch) both insert what this returns.
CREATE OR REPLACE FUNCTION chatd._reply_values(
    p_chat chatd.chats,
    p_content jsonb,
    p_usage jsonb,
    p_runtime_ms bigint,
    p_finish_reason text,
    OUT o_content jsonb,
    OUT o_input bigint,
    OUT o_output bigint,
    OUT o_reasoning bigint,
    OUT o_cache_read bigint,
    OUT o_cache_write bigint,
    OUT o_cost bigint,
    OUT o_estimated boolean
)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_usage jsonb := coalesce(p_usage, '{}'::jsonb);
BEGIN
    IF p_finish_reason IS NOT NULL
        AND p_finish_reason NOT IN ('stop', 'length', 'content_filter', 'tool_calls', 'other') THEN
        RAISE EXCEPTION 'invalid finish_reason % for chat %: expected stop, length, content_filter, tool_calls or other',
            left(p_finish_reason, 100), p_chat.id
            USING ERRCODE = 'CD007';
    END IF;
    IF p_finish_reason IS NOT NULL AND p_content = '[]'::jsonb THEN
        o_content := p_content;  -- a finished step with nothing to show
    ELSE
        o_content := chatd._content(p_content);
    END IF;
    IF p_runtime_ms < 0 THEN
        RAISE EXCEPTION 'invalid runtime_ms % for chat %', p_runtime_ms, p_chat.id USING ERRCODE = 'CD007';
    END IF;
    SELECT u.o_input, u.o_output, u.o_reasoning, u.o_cache_read, u.o_cache_write
    INTO o_input, o_output, o_reasoning, o_cache_read, o_cache_write
    FROM chatd._usage_tokens(p_chat.id, v_usage) AS u;
    o_cost := chatd.message_cost_micros(p_chat.model_config_id, o_input, o_output, o_cache_read, o_cache_write);
    o_estimated := coalesce(v_usage -> 'estimated' = 'true'::jsonb, FALSE);
END
$$;

-- Inserts the messages of a finished or interrupted turn: the tool-round
-- messages first (in order), then the assistant message carrying usage,
-- cost (at the prices of p_chat.model_config_id), runtime and finish
-- reason, with the given visibility. Returns the assistant message id.
-- usage {"estimated": true} marks counts the worker estimated
-- (messages.usage_estimated); they are billed like reported ones.
-- p_finish_reason: NULL (an interrupted turn) or one of stop, length,
-- content_filter, tool_calls, other (CD007 otherwise). A finished step
-- (p_finish_reason given) may have no parts at all (content []): a
-- reasoning model that spent its whole output budget on hidden reasoning
-- returns an empty text with 'length', and its usage must still be billed.
DROP FUNCTION IF EXISTS chatd._insert_turn_messages(chatd.chats, jsonb, jsonb, text, bigint, jsonb);
DROP FUNCTION IF EXISTS chatd._insert_turn_messages(
    chatd.chats, jsonb, jsonb, text, bigint, jsonb, chatd.message_visibility
);
CREATE OR REPLACE FUNCTION chatd._insert_turn_messages(
    p_chat chatd.chats,
    p_content jsonb,
    p_usage jsonb,
    p_provider_response_id text,
    p_runtime_ms bigint,
    p_tool_messages jsonb,
    p_visibility chatd.message_visibility DEFAULT 'both',
    p_finish_reason text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_reply record;
    v_tool jsonb;
    v_id bigint;
BEGIN
    SELECT * INTO v_reply FROM chatd._reply_values(p_chat, p_content, p_usage, p_runtime_ms, p_finish_reason) AS r;
    IF jsonb_typeof(coalesce(p_tool_messages, '[]'::jsonb)) <> 'array' THEN
        RAISE EXCEPTION 'invalid tool messages for chat %: expected an array', p_chat.id USING ERRCODE = 'CD007';
    END IF;

    FOR v_tool IN SELECT e.value FROM jsonb_array_elements(coalesce(p_tool_messages, '[]'::jsonb)) AS e (value) LOOP
        IF jsonb_typeof(v_tool) <> 'object' OR coalesce(v_tool ->> 'role', 'tool') NOT IN ('assistant', 'tool') THEN
            RAISE EXCEPTION 'invalid tool message for chat %: expected {role: assistant|tool, content}', p_chat.id
                USING ERRCODE = 'CD007';
        END IF;
        INSERT INTO chatd.messages (chat_id, role, content, model_config_id)
        VALUES (
            p_chat.id,
            coalesce(v_tool ->> 'role', 'tool')::chatd.message_role,
            chatd._content(v_tool -> 'content'),
            p_chat.model_config_id
        );
    END LOOP;

    INSERT INTO chatd.messages (
        chat_id, role, content, model_config_id,
        input_tokens, output_tokens, reasoning_tokens, cache_read_tokens, cache_write_tokens,
        total_cost_micros, runtime_ms, provider_response_id, visibility, finish_reason, usage_estimated
    )
    VALUES (
        p_chat.id, 'assistant', v_reply.o_content, p_chat.model_config_id,
        v_reply.o_input, v_reply.o_output, v_reply.o_reasoning, v_reply.o_cache_read, v_reply.o_cache_write,
        v_reply.o_cost, p_runtime_ms, p_provider_response_id, coalesce(p_visibility, 'both'), p_finish_reason,
        v_reply.o_estimated
    )
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

-- Ends a turn successfully: persists the tool-round messages and the
-- assistant message (usage, cost, runtime, finish reason), then goes to
-- waiting, or to pending with the queue head promoted to a user message.
-- Returns the assistant message id. The lease is bumped (the turn is over).
--
-- A step that the provider's content filter stopped (p_finish_reason
-- 'content_filter') is stored and billed like any other, but the chat goes
-- to error with a content_filter ChatError (not retryable) and the queue
-- stays queued: the user should see why the answer stopped.
--
-- Promoting the queue head starts a new turn, so it is an admission of the
-- chat's owner in the chat's organization (docs/spend-limits.md), counting
-- the cost of the turn being finished: when the spend limit refuses it, the
-- chat goes to error with a usage_limit ChatError (not retryable) and the
-- queued messages stay queued. The admission lock is taken after the chat
-- row, like every admission.
DROP FUNCTION IF EXISTS chatd.finish_turn(uuid, bigint, jsonb, jsonb, text, bigint, jsonb);
CREATE OR REPLACE FUNCTION chatd.finish_turn(
    p_chat_id uuid,
    p_lease bigint,
    p_content jsonb,
    p_usage jsonb DEFAULT '{}',
    p_provider_response_id text DEFAULT NULL,
    p_runtime_ms bigint DEFAULT NULL,
    p_tool_messages jsonb DEFAULT '[]',
    p_finish_reason text DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_head chatd.queued_messages;
    v_usage record;
    v_refusal jsonb;
    v_filtered jsonb;
    v_id bigint;
BEGIN
    v_chat := chatd._fenced_chat(p_chat_id, p_lease, 'finish_turn');
    SELECT q.* INTO v_head FROM chatd.queued_messages AS q
    WHERE q.chat_id = p_chat_id ORDER BY q.position LIMIT 1;
    IF v_head.id IS NOT NULL THEN
        -- the turn's cost counts: it is recorded below, in this transaction
        SELECT * INTO v_usage FROM chatd._usage_tokens(p_chat_id, p_usage) AS u;
        v_refusal := chatd._spend_refusal(
            v_chat.owner_id, v_chat.organization_id,
            chatd.message_cost_micros(
                v_chat.model_config_id, v_usage.o_input, v_usage.o_output, v_usage.o_cache_read, v_usage.o_cache_write
            )
        );
    END IF;

    -- Messages first, the status last: the status notification then names
    -- the newest message of the committed chat (last_message_id), so a
    -- subscriber that keeps one notification per version misses nothing.
    v_id := chatd._insert_turn_messages(
        v_chat, p_content, p_usage, p_provider_response_id, p_runtime_ms, p_tool_messages, 'both', p_finish_reason
    );
    IF p_finish_reason = 'content_filter' THEN
        SELECT jsonb_build_object(
            'message', p.name || ' stopped the reply (content filter)',
            'kind', 'content_filter', 'provider', p.name, 'retryable', FALSE,
            'detail', 'finish_reason content_filter'
        ) INTO v_filtered
        FROM chatd.model_configs AS m JOIN chatd.providers AS p ON p.id = m.provider_id
        WHERE m.id = v_chat.model_config_id;
        v_refusal := NULL;
    ELSIF v_head.id IS NOT NULL AND v_refusal IS NULL THEN
        PERFORM chatd._promote_queue_head(p_chat_id);
    END IF;

    UPDATE chatd.chats AS c
    SET (
        status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
        next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
        model_config_id
    ) = (
        SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state, r.last_error,
            r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id, r.interrupted_last_message_id,
            r.model_config_id
        FROM chatd._turn_reset(
            c,
            CASE
                WHEN v_filtered IS NOT NULL THEN 'error'
                WHEN v_head.id IS NULL THEN 'waiting'
                WHEN v_refusal IS NOT NULL THEN 'error'
                ELSE 'pending'
            END::chatd.chat_status,
            p_bump_lease => TRUE,
            p_last_error => coalesce(v_filtered, chatd._usage_limit_error(v_refusal)),
            p_model_config_id => CASE WHEN v_filtered IS NULL AND v_refusal IS NULL THEN v_head.model_config_id END
        ) AS r
    )
    WHERE c.id = p_chat_id;
    RETURN v_id;
END
$$;

-- Persists the partial assistant message of a turn that was stopped while
-- it ran (interrupt_chat, archive_chat, send_message with busy_behavior
-- interrupt, promote_queued_message: each records chats.interrupted_*).
-- Allowed only for that lease, once, while the chat is not running and its
-- lease is still p_lease (no claim, edit, release or recovery happened
-- since: each bumps the lease). CD004 otherwise: a lease that never ran, a
-- turn that finished or failed, or a second save. The message is billed at
-- the prices of the model that ran the turn (not the chat's current one).
-- When a user message was added after the turn was stopped, the partial
-- answer is kept for the user and the bill (visibility 'user') but never
-- sent to the model: it would follow the newer question.
CREATE OR REPLACE FUNCTION chatd.save_interrupted_turn(
    p_chat_id uuid,
    p_lease bigint,
    p_content jsonb,
    p_usage jsonb DEFAULT '{}',
    p_provider_response_id text DEFAULT NULL,
    p_runtime_ms bigint DEFAULT NULL
)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_visibility chatd.message_visibility;
BEGIN
    v_chat := chatd._fenced_chat(p_chat_id, p_lease, 'save_interrupted_turn', 'stopped');
    IF v_chat.interrupted_lease IS DISTINCT FROM p_lease THEN
        RAISE EXCEPTION 'chat %: no interrupted turn to save under lease % (never ran, ended, or already saved)',
            p_chat_id, p_lease
            USING ERRCODE = 'CD004';
    END IF;
    v_visibility := CASE WHEN EXISTS (
        SELECT 1 FROM chatd.messages AS m
        WHERE m.chat_id = p_chat_id AND m.role = 'user' AND m.id > coalesce(v_chat.interrupted_last_message_id, 0)
    ) THEN 'user' ELSE 'both' END::chatd.message_visibility;
    UPDATE chatd.chats AS c
    SET interrupted_lease = NULL, interrupted_model_config_id = NULL, interrupted_last_message_id = NULL
    WHERE c.id = p_chat_id;
    v_chat.model_config_id := coalesce(v_chat.interrupted_model_config_id, v_chat.model_config_id);
    RETURN chatd._insert_turn_messages(
        v_chat, p_content, p_usage, p_provider_response_id, p_runtime_ms, '[]', v_visibility
    );
END
$$;

-- Retry policy (DESIGN.md section 6). attempt counts the failed tries of the
-- current turn. After failure number n (n = attempt + 1): a non-retryable
-- error, or n >= settings.max_attempts, goes to error; otherwise the chat
-- goes back to pending, due after
--     delay = max(min(backoff_base * 2^(n-1), backoff_cap), retry_after)
-- retry_state = {attempt, delay_ms, retrying_at, error} (error trimmed),
-- last_error = the full error. The lease is bumped (the turn is over).
-- The error must be a valid ChatError (chatd._chat_error: known kind,
-- boolean retryable), else CD007. retry_after (p_retry_after_ms) must not
-- be negative (CD007) and is capped at 24 hours (86,400,000 ms, the
-- worker's own cap), so no hint can park a chat for years or overflow.
CREATE OR REPLACE FUNCTION chatd.record_failure(
    p_chat_id uuid,
    p_lease bigint,
    p_error jsonb,
    p_retry_after_ms bigint DEFAULT NULL
)
RETURNS TABLE (status chatd.chat_status, attempt integer, next_attempt_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_chat chatd.chats;
    v_settings chatd.settings;
    v_attempt integer;
    v_retryable boolean;
    v_delay_ms bigint;
    v_at timestamptz;
BEGIN
    PERFORM chatd._chat_error(p_error);
    IF p_retry_after_ms < 0 THEN
        RAISE EXCEPTION 'record_failure: negative retry_after_ms %', p_retry_after_ms USING ERRCODE = 'CD007';
    END IF;
    v_chat := chatd._fenced_chat(p_chat_id, p_lease, 'record_failure');
    SELECT s.* INTO STRICT v_settings FROM chatd.settings AS s;
    v_attempt := v_chat.attempt + 1;
    v_retryable := (p_error ->> 'retryable')::boolean;

    IF NOT v_retryable OR v_attempt >= v_settings.max_attempts THEN
        UPDATE chatd.chats AS c
        SET (
            status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
            next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
            model_config_id
        ) = (
            SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state, r.last_error,
                r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id, r.interrupted_last_message_id,
                r.model_config_id
            FROM chatd._turn_reset(
                c, 'error', p_bump_lease => TRUE, p_last_error => p_error,
                p_attempt => v_attempt, p_recoveries => c.recoveries
            ) AS r
        )
        WHERE c.id = p_chat_id
        RETURNING c.status, c.attempt, c.next_attempt_at INTO status, attempt, next_attempt_at;
        RETURN NEXT;
        RETURN;
    END IF;

    v_delay_ms := least(
        ceil(extract(EPOCH FROM v_settings.backoff_base) * 1000 * power(2::numeric, least(v_attempt - 1, 62))),
        ceil(extract(EPOCH FROM v_settings.backoff_cap) * 1000)
    )::bigint;
    v_delay_ms := greatest(v_delay_ms, least(coalesce(p_retry_after_ms, 0), 86400000));
    v_at := now() + make_interval(secs => v_delay_ms / 1000.0);
    UPDATE chatd.chats AS c
    SET (
        status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
        next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
        model_config_id
    ) = (
        SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state, r.last_error,
            r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id, r.interrupted_last_message_id,
            r.model_config_id
        FROM chatd._turn_reset(
            c, 'pending', p_bump_lease => TRUE, p_last_error => p_error,
            p_attempt => v_attempt, p_recoveries => c.recoveries, p_next_attempt_at => v_at,
            p_retry_state => jsonb_build_object(
                'attempt', v_attempt, 'delay_ms', v_delay_ms, 'retrying_at', v_at,
                'error', chatd._short_error(p_error)
            )
        ) AS r
    )
    WHERE c.id = p_chat_id
    RETURNING c.status, c.attempt, c.next_attempt_at INTO status, attempt, next_attempt_at;
    RETURN NEXT;
END
$$;

-- Graceful shutdown: the worker's running chats (all, or the given ones) go
-- back to pending, due now; their leases are bumped. Releasing all of them
-- (p_chat_ids NULL) also deletes the worker's row in chatd.workers: the
-- worker is going away (a later heartbeat or claim creates it again).
-- Returns how many chats were released. CD002 when the worker id belongs to
-- another database login.
CREATE OR REPLACE FUNCTION chatd.release_chats(p_worker_id text, p_chat_ids uuid[] DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM chatd._check_worker_login(p_worker_id);
    -- the tree lock order: a tree's root first, then its chats in id order
    WITH locked AS (
        SELECT c.id FROM chatd.chats AS c
        WHERE c.status = 'running' AND c.worker_id = p_worker_id
            AND (p_chat_ids IS NULL OR c.id = ANY (p_chat_ids))
        ORDER BY c.root_chat_id, c.id <> c.root_chat_id, c.id
        FOR UPDATE
    )
    UPDATE chatd.chats AS c
    SET (
        status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
        next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
        model_config_id
    ) = (
        SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state, r.last_error,
            r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id, r.interrupted_last_message_id,
            r.model_config_id
        FROM chatd._turn_reset(
            c, 'pending', p_bump_lease => TRUE, p_last_error => c.last_error,
            p_attempt => c.attempt, p_recoveries => c.recoveries, p_retry_state => c.retry_state
        ) AS r
    )
    FROM locked
    WHERE c.id = locked.id AND c.status = 'running' AND c.worker_id = p_worker_id;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF p_chat_ids IS NULL THEN
        DELETE FROM chatd.workers AS w
        WHERE w.id = p_worker_id
            AND NOT EXISTS (
                SELECT 1 FROM chatd.chats AS c WHERE c.status = 'running' AND c.worker_id = p_worker_id
            );
    END IF;
    RETURN v_count;
END
$$;

-- Finishes a batch of turns in one statement: one commit, one WAL flush and
-- one wake-up of every listener for all of them, instead of one per turn.
-- Each item is {chat_id, lease, content, usage, provider_response_id,
-- runtime_ms, finish_reason} and optionally the turn's last streamed parts {seq, parts}.
-- Chats are locked in the tree lock order (root first, then id order;
-- two batches, or a batch and archive_chat, never deadlock each other). A
-- turn whose lease is lost is reported with message_id NULL and changes
-- nothing; any other error aborts the whole batch, and the caller finishes
-- those turns one by one (finish_turn), which reports each error on its own.
--
-- Lock order: every chat of the batch first (id order), then, when spend
-- limits are enabled, the admission locks of the owners whose queue head may
-- be promoted (user id order): the batch never waits for a chat row while it
-- holds an admission lock, as no other admission does.
CREATE OR REPLACE FUNCTION chatd.finish_turns(p_turns jsonb)
RETURNS TABLE (chat_id uuid, message_id bigint)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_turn jsonb;
    v_chat_id uuid;
    v_lease bigint;
    v_fenced boolean;
    v_ids uuid[];
    v_plain uuid[];
    v_replies bigint[];
BEGIN
    IF jsonb_typeof(p_turns) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'finish_turns: turns must be a JSON array' USING ERRCODE = 'CD007';
    END IF;
    -- the tree lock order of archive_chat and create_chat: a tree's root
    -- first, then its chats in id order (root_chat_id never changes); then
    -- the owners' admission locks of chats whose queue head may go out
    v_ids := ARRAY(SELECT (e.value ->> 'chat_id')::uuid FROM jsonb_array_elements(p_turns) AS e (value));
    v_ids := ARRAY(
        SELECT c.id FROM chatd.chats AS c
        WHERE c.id = ANY (v_ids)
        ORDER BY c.root_chat_id, c.id <> c.root_chat_id, c.id
        FOR UPDATE
    );
    IF chatd._spend_limits_enabled() THEN
        PERFORM chatd._lock_admissions(ARRAY(
            SELECT c.owner_id FROM chatd.chats AS c
            WHERE
                c.id = ANY (v_ids)
                AND EXISTS (SELECT 1 FROM chatd.queued_messages AS q WHERE q.chat_id = c.id)
        ));
    END IF;
    -- The plain turns, finished together: the lease holds, the chat is in
    -- the batch once, has no queued message and no parent waiting for it
    -- (whose lock the answer trigger takes), and the turn has no parts and
    -- no content_filter finish. What finish_turn does for them (messages
    -- first, then the chat to waiting with the lease bumped), in one INSERT
    -- and one UPDATE for the batch instead of one of each per turn: each
    -- statement's start (constraints, triggers) is paid once. Every other
    -- turn goes through finish_turn below.
    v_plain := ARRAY(
        SELECT c.id
        FROM (
            SELECT e.value, count(*) OVER (PARTITION BY e.value ->> 'chat_id') AS times
            FROM jsonb_array_elements(p_turns) AS e (value)
        ) AS t
        INNER JOIN chatd.chats AS c ON c.id = (t.value ->> 'chat_id')::uuid AND c.id = ANY (v_ids)
        WHERE t.times = 1 AND c.status = 'running' AND c.lease = (t.value ->> 'lease')::bigint
            AND NOT t.value ? 'parts'
            AND (t.value ->> 'finish_reason') IS DISTINCT FROM 'content_filter'
            AND c.parent_tool_call_id IS NULL
            AND NOT EXISTS (SELECT 1 FROM chatd.queued_messages AS q WHERE q.chat_id = c.id)
    );
    IF cardinality(v_plain) > 0 THEN
        WITH written AS (
            INSERT INTO chatd.messages AS m (
                chat_id, role, content, model_config_id,
                input_tokens, output_tokens, reasoning_tokens, cache_read_tokens, cache_write_tokens,
                total_cost_micros, runtime_ms, provider_response_id, visibility, finish_reason, usage_estimated
            )
            SELECT
                c.id, 'assistant', r.o_content, c.model_config_id,
                r.o_input, r.o_output, r.o_reasoning, r.o_cache_read, r.o_cache_write,
                r.o_cost, (e.value ->> 'runtime_ms')::bigint, e.value ->> 'provider_response_id', 'both',
                e.value ->> 'finish_reason', r.o_estimated
            FROM jsonb_array_elements(p_turns) AS e (value)
            INNER JOIN chatd.chats AS c ON c.id = (e.value ->> 'chat_id')::uuid AND c.id = ANY (v_plain)
            CROSS JOIN LATERAL chatd._reply_values(
                c, e.value -> 'content', coalesce(e.value -> 'usage', '{}'), (e.value ->> 'runtime_ms')::bigint,
                e.value ->> 'finish_reason'
            ) AS r
            ORDER BY c.id
            RETURNING m.chat_id, m.id
        )
        SELECT array_agg(w.chat_id), array_agg(w.id) INTO v_plain, v_replies FROM written AS w;
        UPDATE chatd.chats AS c
        SET (
            status, worker_id, heartbeat_at, lease, attempt, recoveries, retry_state, last_error,
            next_attempt_at, interrupted_lease, interrupted_model_config_id, interrupted_last_message_id,
            model_config_id
        ) = (
            SELECT r.status, r.worker_id, r.heartbeat_at, r.lease, r.attempt, r.recoveries, r.retry_state,
                r.last_error, r.next_attempt_at, r.interrupted_lease, r.interrupted_model_config_id,
                r.interrupted_last_message_id, r.model_config_id
            FROM chatd._turn_reset(c, 'waiting', p_bump_lease => TRUE) AS r
        )
        WHERE c.id = ANY (v_plain);
    END IF;
    -- in that lock order (v_ids now holds the locked chats in it), turns of
    -- unknown chats last; no join with chatd.chats, whose plan for a batch
    -- of unknown size was a hash join over a sequential scan of every chat
    FOR v_turn IN
        SELECT e.value
        FROM jsonb_array_elements(p_turns) AS e (value)
        LEFT JOIN unnest(v_ids) WITH ORDINALITY AS o (id, n) ON o.id = (e.value ->> 'chat_id')::uuid
        ORDER BY o.n, (e.value ->> 'chat_id')::uuid
    LOOP
        v_chat_id := (v_turn ->> 'chat_id')::uuid;
        v_lease := (v_turn ->> 'lease')::bigint;
        chat_id := v_chat_id;
        IF v_chat_id = ANY (v_plain) THEN
            message_id := v_replies[array_position(v_plain, v_chat_id)];  -- finished above
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_fenced := (chatd._fenced_chat(v_chat_id, v_lease, 'finish_turns', 'try')).id IS NOT NULL;
        IF NOT v_fenced THEN
            message_id := NULL;  -- lease lost (or no such chat): nothing written
        ELSE
            IF v_turn ? 'parts' THEN
                PERFORM chatd.publish_parts(v_chat_id, v_lease, (v_turn ->> 'seq')::integer, v_turn -> 'parts');
            END IF;
            message_id := chatd.finish_turn(
                v_chat_id, v_lease, v_turn -> 'content', coalesce(v_turn -> 'usage', '{}'),
                v_turn ->> 'provider_response_id', (v_turn ->> 'runtime_ms')::bigint, '[]',
                v_turn ->> 'finish_reason'
            );
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
