-- Context windows (issue 14, DESIGN.md section 11, docs/context.md): what
-- the model sees of a chat, chosen in SQL at claim time, and compaction of
-- the older history into a summary message.
--
-- The prompt of a step is the chat's system prompt, its newest summary and
-- the newest model-visible messages after that summary that fit the budget
--     model_configs.context_limit - max_output_tokens
--       - settings.context_margin_tokens - (system prompt) - (summary)
-- counted with _message_tokens. Every walk over the history goes newest
-- first through messages (chat_id, id) and stops when the budget is spent,
-- so its cost is bounded by the window, never by the chat's length.
--
-- Summaries: messages with role system, visibility model and
-- summary_through_id (the newest message id they cover), written by the
-- worker through commit_summary and billed like any step; the chat points
-- at its newest one (chats.summary_message_id). Older messages stay: the
-- user and the spend history keep them.

-- The tokens a message takes in a prompt: the larger of an estimate from
-- its content (one token per 4 bytes of its JSON, plus 4 for the message's
-- framing) and, for an assistant message, the output tokens the provider
-- reported for it (less hidden reasoning, which is not sent back as text).
-- An estimate by design (no tokenizer of every provider in SQL): the margin
-- and the context_length retry (docs/context.md) absorb its error.
CREATE OR REPLACE FUNCTION chatd._message_tokens(
    p_role chatd.message_role, p_content jsonb, p_output_tokens bigint, p_reasoning_tokens bigint
)
RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN greatest(
        ceil(octet_length(p_content::text) / 4.0)::bigint + 4,
        CASE WHEN p_role = 'assistant' THEN coalesce(p_output_tokens, 0) - coalesce(p_reasoning_tokens, 0) END
    );
END
$$;

-- Trigger: keeps messages.tokens (_message_tokens) on every insert and
-- every change of what it counts, so a window walk reads one integer per
-- message instead of converting its content.
CREATE OR REPLACE FUNCTION chatd.messages_tokens()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    NEW.tokens := chatd._message_tokens(NEW.role, NEW.content, NEW.output_tokens, NEW.reasoning_tokens);
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER messages_05_tokens
BEFORE INSERT OR UPDATE OF content, role, output_tokens, reasoning_tokens ON chatd.messages
FOR EACH ROW EXECUTE FUNCTION chatd.messages_tokens();

-- The context window of a chat now: {system_id (the system prompt: the
-- chat's first message when it is a live system message, or NULL),
-- summary_id (its newest live summary, or NULL), floor_id (messages at or
-- below it are the system prompt or summarized), start_id (the oldest
-- message of the window; NULL when no message is after floor_id),
-- budget_tokens, head_tokens (system prompt and summary), window_tokens,
-- compact (the history after the summary passes settings.compact_threshold
-- of the budget, or did not fit at all)}. A window cut by the budget starts
-- at its oldest user message (never with a tool result whose call was cut
-- off, nor with an assistant message: providers want a user message
-- first), else at its oldest assistant message; it always holds the newest
-- message, even one larger than the budget (the provider then says
-- context_length, see docs/context.md).
CREATE OR REPLACE FUNCTION chatd._context_window(p_chat_id uuid)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_threshold real;
    v_room bigint;
    v_system_id bigint;
    v_system_tokens bigint := 0;
    v_summary_id bigint;
    v_summary_through bigint;
    v_summary_tokens bigint := 0;
    v_floor bigint;
    v_budget bigint;
    v_used bigint := 0;
    v_start bigint;
    v_over boolean := FALSE;
    v_first bigint;
    v_n bigint;
    v_fit_id bigint;
    v_fit_total bigint;
    v_cut boolean;
    v_last bigint;
BEGIN
    -- one statement for the chat, its model, the settings, the system prompt
    -- (the chat's first message when it is a live system message) and the
    -- newest summary: a claim of a short chat runs two statements here
    SELECT m.context_limit::bigint - m.max_output_tokens - s.context_margin_tokens, s.compact_threshold,
        sys.id, sys.tokens, sm.id, sm.summary_through_id, sm.tokens
    INTO STRICT v_room, v_threshold, v_system_id, v_system_tokens, v_summary_id, v_summary_through, v_summary_tokens
    FROM chatd.chats AS c
    INNER JOIN chatd.model_configs AS m ON m.id = c.model_config_id
    CROSS JOIN chatd.settings AS s
    LEFT JOIN LATERAL (
        SELECT f.id, coalesce(f.tokens, chatd._message_tokens(f.role, f.content, f.output_tokens, f.reasoning_tokens))
            AS tokens
        FROM (
            SELECT x.* FROM chatd.messages AS x WHERE x.chat_id = c.id ORDER BY x.chat_id, x.id LIMIT 1
        ) AS f
        WHERE f.role = 'system' AND NOT f.deleted AND f.summary_through_id IS NULL
    ) AS sys ON TRUE
    LEFT JOIN LATERAL (
        SELECT x.id, x.summary_through_id, coalesce(x.tokens, chatd._message_tokens(x.role, x.content, NULL, NULL))
            AS tokens
        FROM chatd.messages AS x
        WHERE x.id = c.summary_message_id AND x.chat_id = c.id AND NOT x.deleted
    ) AS sm ON TRUE
    WHERE c.id = p_chat_id;
    v_floor := greatest(coalesce(v_system_id, 0), coalesce(v_summary_through, 0));
    v_budget := v_room - coalesce(v_system_tokens, 0) - coalesce(v_summary_tokens, 0);
    -- newest first, 256 messages per statement (a running sum in SQL, not a
    -- loop per row), until the budget is spent or the history ends
    LOOP
        SELECT count(*), min(w.id) FILTER (WHERE w.total <= v_budget - v_used), max(w.total) FILTER (
            WHERE w.total <= v_budget - v_used
        ), bool_or(w.total > v_budget - v_used), min(w.id)
        INTO v_n, v_fit_id, v_fit_total, v_cut, v_last
        FROM (
            SELECT c.id, sum(c.tokens) OVER (ORDER BY c.id DESC) AS total
            FROM (
                SELECT m.id,
                    -- _message_tokens written out (a function with a pinned
                    -- search_path is not inlined: 25 us a call on rows older
                    -- than migration 0016, whose tokens are NULL)
                    coalesce(m.tokens, greatest(
                        ceil(octet_length(m.content::text) / 4.0)::bigint + 4,
                        CASE WHEN m.role = 'assistant'
                            THEN coalesce(m.output_tokens, 0) - coalesce(m.reasoning_tokens, 0) END
                    )) AS tokens
                FROM chatd.messages AS m
                WHERE m.chat_id = p_chat_id AND m.id > v_floor AND m.id < coalesce(v_last, 9223372036854775807)
                    AND NOT m.deleted AND m.visibility IN ('both', 'model') AND m.summary_through_id IS NULL
                ORDER BY m.chat_id DESC, m.id DESC  -- messages_chat_idx, backwards
                LIMIT 256
            ) AS c
        ) AS w;
        IF v_fit_id IS NOT NULL THEN
            v_start := v_fit_id;
            v_used := v_used + v_fit_total;
        ELSIF v_start IS NULL AND v_n > 0 THEN
            -- the newest message alone is larger than the budget: it is sent anyway
            SELECT m.id, coalesce(m.tokens, chatd._message_tokens(m.role, m.content, m.output_tokens, m.reasoning_tokens))
            INTO v_start, v_used
            FROM chatd.messages AS m
            WHERE m.chat_id = p_chat_id AND m.id > v_floor AND NOT m.deleted
                AND m.visibility IN ('both', 'model') AND m.summary_through_id IS NULL
            ORDER BY m.chat_id DESC, m.id DESC
            LIMIT 1;
        END IF;
        IF v_cut THEN
            v_over := TRUE;
        END IF;
        EXIT WHEN v_over OR v_n < 256;
    END LOOP;
    IF v_over THEN
        -- only for a chat longer than its window: EXECUTE plans these two
        -- range scans with their values (a cached generic plan guesses a
        -- third of the chat for id >= $2 and may scan it: 136 ms at 10^6)
        EXECUTE $q$
            SELECT coalesce(min(m.id) FILTER (WHERE m.role = 'user'), min(m.id) FILTER (WHERE m.role = 'assistant'))
            FROM chatd.messages AS m
            WHERE m.chat_id = $1 AND m.id >= $2 AND NOT m.deleted
                AND m.visibility IN ('both', 'model') AND m.summary_through_id IS NULL
        $q$ INTO v_first USING p_chat_id, v_start;
        IF v_first IS NOT NULL AND v_first > v_start THEN
            EXECUTE $q$
                SELECT coalesce(sum(coalesce(m.tokens, greatest(  -- _message_tokens, inlined as above
                    ceil(octet_length(m.content::text) / 4.0)::bigint + 4,
                    CASE WHEN m.role = 'assistant' THEN coalesce(m.output_tokens, 0) - coalesce(m.reasoning_tokens, 0) END
                ))), 0)
                FROM chatd.messages AS m
                WHERE m.chat_id = $1 AND m.id >= $2 AND NOT m.deleted
                    AND m.visibility IN ('both', 'model') AND m.summary_through_id IS NULL
            $q$ INTO v_used USING p_chat_id, v_first;
            v_start := v_first;
        END IF;
    END IF;
    RETURN jsonb_build_object(
        'system_id', v_system_id,
        'summary_id', v_summary_id,
        'floor_id', v_floor,
        'start_id', v_start,
        'budget_tokens', v_budget,
        'head_tokens', coalesce(v_system_tokens, 0) + coalesce(v_summary_tokens, 0),
        'window_tokens', v_used,
        'compact', v_over OR v_used > v_budget * v_threshold
    );
END
$$;

DROP FUNCTION IF EXISTS chatd._window_head(jsonb);

-- The next part of a claimed turn's history to compact, or NULL when none
-- is left. Normally (p_force false) due when the window says compact: the
-- newest messages that fit settings.compact_keep of the budget stay as
-- they are, and the part before them (after the current summary) is
-- summarized, oldest first, as much as fits the budget in one request.
-- After a provider's context_length error (p_force), the provider's real
-- window is smaller than chatd believed: the limit is the prompt that
-- failed (the current window, or p_limit_tokens given back from the first
-- round), what stays fits compact_keep of that limit, and each chunk too,
-- so every summary request fits where the failed prompt did not. What
-- stays starts at a user message. Returns {through_id (the newest message
-- the new summary covers), summary (the current summary's content, or
-- NULL), messages: [{id, role, content}], tokens, limit_tokens}. The
-- worker calls again after each commit_summary until NULL. Fenced like
-- turn_history (CD004, CD001); reads only, bounded by the window.
DROP FUNCTION IF EXISTS chatd.turn_compaction(text, uuid, bigint, boolean);
CREATE OR REPLACE FUNCTION chatd.turn_compaction(
    p_worker_id text, p_chat_id uuid, p_lease bigint, p_force boolean DEFAULT FALSE, p_limit_tokens bigint DEFAULT NULL
)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
SET plan_cache_mode = force_custom_plan  -- as _context_window
AS $$
DECLARE
    v_window jsonb;
    v_floor bigint;
    v_budget bigint;
    v_limit bigint;
    v_chunk bigint;
    v_keep numeric;
    v_kept bigint := 0;
    v_keep_start bigint;
    v_through bigint;
    v_used bigint := 0;
    v_last bigint;
    v_cut boolean := FALSE;
    v_messages jsonb := '[]'::jsonb;
    v_message record;
BEGIN
    PERFORM chatd._fenced_chat(p_chat_id, p_lease, 'turn_compaction', 'read', p_worker_id);
    v_window := chatd._context_window(p_chat_id);
    IF NOT coalesce(p_force, FALSE) AND NOT (v_window ->> 'compact')::boolean THEN
        RETURN NULL;
    END IF;
    v_floor := (v_window ->> 'floor_id')::bigint;
    v_budget := greatest((v_window ->> 'budget_tokens')::bigint, 1);
    v_limit := CASE WHEN p_force THEN coalesce(
        p_limit_tokens, (v_window ->> 'window_tokens')::bigint + (v_window ->> 'head_tokens')::bigint
    ) ELSE v_budget END;
    SELECT s.compact_keep * v_limit INTO STRICT v_keep FROM chatd.settings AS s;
    v_chunk := CASE WHEN p_force THEN greatest(v_keep, 1)::bigint ELSE v_budget END;
    FOR v_message IN
        SELECT m.id,
            coalesce(m.tokens, chatd._message_tokens(m.role, m.content, m.output_tokens, m.reasoning_tokens)) AS tokens
        FROM chatd.messages AS m
        WHERE m.chat_id = p_chat_id AND m.id > v_floor AND NOT m.deleted
            AND m.visibility IN ('both', 'model') AND m.summary_through_id IS NULL
        ORDER BY m.chat_id DESC, m.id DESC
    LOOP
        EXIT WHEN v_kept + v_message.tokens > v_keep AND v_keep_start IS NOT NULL;
        v_kept := v_kept + v_message.tokens;
        v_keep_start := v_message.id;
    END LOOP;
    IF v_keep_start IS NULL THEN
        RETURN NULL;
    END IF;
    -- what stays starts at a user message: the summary never splits a turn's
    -- tool call from its result
    SELECT coalesce(min(m.id), v_keep_start) INTO v_keep_start
    FROM chatd.messages AS m
    WHERE m.chat_id = p_chat_id AND m.id >= v_keep_start AND m.role = 'user' AND NOT m.deleted
        AND m.visibility IN ('both', 'model');
    SELECT max(m.id) INTO v_through
    FROM chatd.messages AS m
    WHERE m.chat_id = p_chat_id AND m.id > v_floor AND m.id < v_keep_start;
    IF v_through IS NULL THEN
        RETURN NULL;
    END IF;
    FOR v_message IN
        SELECT m.id, m.role, m.content,
            coalesce(m.tokens, chatd._message_tokens(m.role, m.content, m.output_tokens, m.reasoning_tokens)) AS tokens
        FROM chatd.messages AS m
        WHERE m.chat_id = p_chat_id AND m.id > v_floor AND m.id <= v_through AND NOT m.deleted
            AND m.visibility IN ('both', 'model') AND m.summary_through_id IS NULL
        ORDER BY m.chat_id, m.id
    LOOP
        IF v_used + v_message.tokens > v_chunk AND v_last IS NOT NULL THEN
            v_cut := TRUE;  -- the rest goes into the next summary
            EXIT;
        END IF;
        v_used := v_used + v_message.tokens;
        v_last := v_message.id;
        v_messages := v_messages || jsonb_build_array(jsonb_build_object(
            'id', v_message.id, 'role', v_message.role, 'content', v_message.content
        ));
    END LOOP;
    RETURN jsonb_build_object(
        'through_id', CASE WHEN v_cut THEN v_last ELSE v_through END,
        'summary', (
            SELECT m.content FROM chatd.messages AS m
            WHERE m.id = (v_window ->> 'summary_id')::bigint
        ),
        'messages', v_messages,
        'tokens', v_used,
        'limit_tokens', v_limit
    );
END
$$;

-- Stores a summary the worker obtained for a claimed turn (fenced like
-- finish_turn: CD004 unless running under p_lease): a system message,
-- visibility model, covering the messages up to p_through_id (a message of
-- this chat newer than what the current summary covers, CD007 otherwise),
-- billed like any step (usage as for finish_turn, at the chat's model's
-- prices; the spend ledger counts it). The chat's summary_message_id points
-- at it from now on. Returns the message id.
CREATE OR REPLACE FUNCTION chatd.commit_summary(
    p_chat_id uuid,
    p_lease bigint,
    p_through_id bigint,
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
    v_floor bigint;
    v_tokens record;
    v_id bigint;
BEGIN
    v_chat := chatd._fenced_chat(p_chat_id, p_lease, 'commit_summary');
    v_floor := coalesce((chatd._context_window(p_chat_id) ->> 'floor_id')::bigint, 0);
    IF p_through_id IS NULL OR p_through_id <= v_floor OR NOT EXISTS (
        SELECT 1 FROM chatd.messages AS m WHERE m.id = p_through_id AND m.chat_id = p_chat_id
    ) THEN
        RAISE EXCEPTION 'commit_summary: % is not a message of chat % after its current summary (%)',
            p_through_id, p_chat_id, v_floor
            USING ERRCODE = 'CD007';
    END IF;
    IF p_runtime_ms < 0 THEN
        RAISE EXCEPTION 'invalid runtime_ms % for chat %', p_runtime_ms, p_chat_id USING ERRCODE = 'CD007';
    END IF;
    SELECT * INTO v_tokens FROM chatd._usage_tokens(p_chat_id, coalesce(p_usage, '{}'::jsonb)) AS u;
    INSERT INTO chatd.messages (
        chat_id, role, content, visibility, model_config_id, summary_through_id,
        input_tokens, output_tokens, reasoning_tokens, cache_read_tokens, cache_write_tokens,
        total_cost_micros, runtime_ms, provider_response_id, finish_reason, usage_estimated
    )
    VALUES (
        p_chat_id, 'system', chatd._content(p_content), 'model', v_chat.model_config_id, p_through_id,
        v_tokens.o_input, v_tokens.o_output, v_tokens.o_reasoning, v_tokens.o_cache_read, v_tokens.o_cache_write,
        chatd.message_cost_micros(
            v_chat.model_config_id, v_tokens.o_input, v_tokens.o_output, v_tokens.o_cache_read,
            v_tokens.o_cache_write
        ),
        p_runtime_ms, p_provider_response_id, 'stop', coalesce(p_usage -> 'estimated' = 'true'::jsonb, FALSE)
    )
    RETURNING id INTO v_id;
    UPDATE chatd.chats AS c SET summary_message_id = v_id WHERE c.id = p_chat_id;
    RETURN v_id;
END
$$;
