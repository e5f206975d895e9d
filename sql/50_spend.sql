-- Spend limits and cost accounting (DESIGN.md section 7, docs/spend-limits.md).
--
--   message_cost_micros   cost of one message from its model's prices
--   resolve_spend_limit   effective limit of (user, organization) and its tier
--   spend_period_bounds   [period_start, resets_at) of the UTC period around a time
--   spend_in_period       a user's recorded spend in a time range
--   usage_limit_status    limit, tier, spend and period of (user, organization)
--   _lock_admissions      the per-user admission lock (a row lock on chatd.users)
--   _spend_refusal        the admission decision, without raising
--   admit_spend           admission check of create_chat / send_message /
--                         promote_queued_message / edit_message: raises CD006
--                         when spent >= limit (finish_turn, finish_turns and
--                         interrupt_chat use _spend_refusal to promote a queue)
--
-- Money is in micro-dollars (bigint). Prices are USD per million tokens, so a
-- price is also micro-dollars per token: cost = sum(tokens x price).

-- The largest token count chatd accepts in one usage bucket of one message
-- (finish_turn, save_interrupted_turn, message_cost_micros): 10^9. Larger
-- counts are nonsense from a provider or a caller, and refused with CD007.
CREATE OR REPLACE FUNCTION chatd._max_tokens()
RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT 1000000000::bigint
$$;

-- Cost of a message in micro-dollars, rounded up once over the exact sum of
-- the buckets (not per bucket). Reasoning tokens are part of the output
-- tokens and are not billed again, so they are not a parameter.
--
-- NULL when the model is unknown, when it has no price at all (unpriced), or
-- when there is no usage (every token count NULL). A bucket with tokens whose
-- own price is NULL on a model that has some price costs 0: a partially priced
-- model lists exactly what it bills (a provider without prompt caching has no
-- cache prices). chatd.models_without_prices lists the unpriced models.
--
-- Every token count must be NULL or in [0, 10^9] (chatd._max_tokens()), else
-- CD007. With prices below 10^8 per token (numeric(14, 6)), a cost is then
-- below 4 * 10^17: the bigint result can never overflow (22003).
CREATE OR REPLACE FUNCTION chatd.message_cost_micros(
    p_model_config_id uuid,
    p_input_tokens bigint,
    p_output_tokens bigint,
    p_cache_read_tokens bigint,
    p_cache_write_tokens bigint
) RETURNS bigint
LANGUAGE plpgsql
STABLE
PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_cost bigint;
BEGIN
    IF least(p_input_tokens, p_output_tokens, p_cache_read_tokens, p_cache_write_tokens) < 0
        OR greatest(p_input_tokens, p_output_tokens, p_cache_read_tokens, p_cache_write_tokens)
        > chatd._max_tokens() THEN
        RAISE EXCEPTION 'invalid token counts (input %, output %, cache read %, cache write %): '
            'each must be between 0 and % tokens',
            p_input_tokens, p_output_tokens, p_cache_read_tokens, p_cache_write_tokens, chatd._max_tokens()
            USING ERRCODE = 'CD007';
    END IF;
    SELECT ceil(
        coalesce(p_input_tokens, 0) * coalesce(mc.input_price_per_mtok, 0)
        + coalesce(p_output_tokens, 0) * coalesce(mc.output_price_per_mtok, 0)
        + coalesce(p_cache_read_tokens, 0) * coalesce(mc.cache_read_price_per_mtok, 0)
        + coalesce(p_cache_write_tokens, 0) * coalesce(mc.cache_write_price_per_mtok, 0)
    )::bigint
    INTO v_cost
    FROM chatd.model_configs AS mc
    WHERE
        mc.id = p_model_config_id
        AND num_nonnulls(
            mc.input_price_per_mtok, mc.output_price_per_mtok,
            mc.cache_read_price_per_mtok, mc.cache_write_price_per_mtok
        ) > 0
        AND num_nonnulls(
            p_input_tokens, p_output_tokens, p_cache_read_tokens, p_cache_write_tokens
        ) > 0;
    RETURN v_cost;
END
$$;

COMMENT ON FUNCTION chatd.message_cost_micros(uuid, bigint, bigint, bigint, bigint) IS
'Cost in micro-dollars, rounded up over the exact sum; NULL when the model is unpriced or there is no usage. '
'A bucket whose own price is NULL costs 0 on a partially priced model. '
'Token counts outside [0, 10^9] raise CD007.';

-- The effective spend limit of a user, and the tier that decided it:
--   disabled  the usage-limit config is disabled: no limit (NULL);
--   user      the user's own override (users.chat_spend_limit_micros);
--   group     the smallest limit among the user's groups in the organization
--             (in every organization when p_organization_id is NULL); groups
--             without a limit do not count;
--   default   usage_limit_config.default_limit_micros (NULL: no limit).
-- Always exactly one row.
CREATE OR REPLACE FUNCTION chatd.resolve_spend_limit(
    p_user_id uuid,
    p_organization_id uuid DEFAULT NULL
) RETURNS TABLE (limit_micros bigint, source text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_enabled boolean;
    v_default bigint;
    v_limit bigint;
BEGIN
    SELECT c.enabled, c.default_limit_micros
    INTO v_enabled, v_default
    FROM chatd.usage_limit_config AS c
    WHERE c.singleton;
    IF NOT coalesce(v_enabled, FALSE) THEN
        RETURN QUERY SELECT NULL::bigint, 'disabled'::text;
        RETURN;
    END IF;

    SELECT u.chat_spend_limit_micros INTO v_limit
    FROM chatd.users AS u
    WHERE u.id = p_user_id;
    IF v_limit IS NOT NULL THEN
        RETURN QUERY SELECT v_limit, 'user'::text;
        RETURN;
    END IF;

    SELECT min(g.chat_spend_limit_micros) INTO v_limit
    FROM chatd.group_members AS gm
    INNER JOIN chatd.groups AS g ON g.id = gm.group_id
    WHERE
        gm.user_id = p_user_id
        AND (p_organization_id IS NULL OR gm.organization_id = p_organization_id)
        AND g.chat_spend_limit_micros IS NOT NULL;
    IF v_limit IS NOT NULL THEN
        RETURN QUERY SELECT v_limit, 'group'::text;
        RETURN;
    END IF;

    RETURN QUERY SELECT v_default, 'default'::text;
END
$$;

-- The UTC period of the given kind that contains p_at: [period_start,
-- resets_at). Days start at 00:00 UTC, weeks on Monday 00:00 UTC (ISO),
-- months on the 1st at 00:00 UTC. Independent of the session's TimeZone.
CREATE OR REPLACE FUNCTION chatd.spend_period_bounds(
    p_period chatd.spend_period,
    p_at timestamptz DEFAULT now()
) RETURNS TABLE (period_start timestamptz, resets_at timestamptz)
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT
        b.local_start AT TIME ZONE 'UTC',
        (b.local_start + b.length) AT TIME ZONE 'UTC'
    FROM (
        SELECT
            CASE p_period
                WHEN 'day' THEN date_trunc('day', p_at AT TIME ZONE 'UTC')
                WHEN 'week' THEN date_trunc('week', p_at AT TIME ZONE 'UTC')
                WHEN 'month' THEN date_trunc('month', p_at AT TIME ZONE 'UTC')
            END AS local_start,
            CASE p_period
                WHEN 'day' THEN INTERVAL '1 day'
                WHEN 'week' THEN INTERVAL '1 week'
                WHEN 'month' THEN INTERVAL '1 month'
            END AS length
    ) AS b
$$;

-- A user's recorded spend: the sum of total_cost_micros of the messages of
-- the chats they own, created in [p_start, p_end), in one organization or in
-- every organization when p_organization_id is NULL. Soft-deleted messages
-- count: deleting a message does not refund it. Unpriced messages add 0.
-- A sum beyond the bigint range reads as 9223372036854775807.
--
-- When both bounds are UTC midnights (or infinite), as every period of
-- spend_period_bounds is, the sum is read from chatd.spend_ledger: at most
-- one row per day and organization of the range, independent of how many
-- messages the user has (sql/52_spend_ledger.sql). Other bounds scan the
-- user's messages in the range.
CREATE OR REPLACE FUNCTION chatd.spend_in_period(
    p_user_id uuid,
    p_start timestamptz,
    p_end timestamptz,
    p_organization_id uuid DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
STABLE
PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_start timestamp := p_start AT TIME ZONE 'UTC';
    v_end timestamp := p_end AT TIME ZONE 'UTC';
    v_spent numeric;
BEGIN
    IF v_start = date_trunc('day', v_start) AND v_end = date_trunc('day', v_end) THEN
        SELECT sum(l.spent_micros) INTO v_spent
        FROM chatd.spend_ledger AS l
        WHERE
            l.user_id = p_user_id
            AND l.day >= v_start::date
            AND l.day < v_end::date
            AND (p_organization_id IS NULL OR l.organization_id = p_organization_id);
    ELSE
        SELECT sum(m.total_cost_micros) INTO v_spent
        FROM chatd.chats AS c
        INNER JOIN chatd.messages AS m ON m.chat_id = c.id
        WHERE
            c.owner_id = p_user_id
            AND (p_organization_id IS NULL OR c.organization_id = p_organization_id)
            AND m.created_at >= p_start
            AND m.created_at < p_end
            AND m.total_cost_micros IS NOT NULL;
    END IF;
    -- saturates at the largest bigint instead of overflowing (22003)
    RETURN least(greatest(coalesce(v_spent, 0), 0), 9223372036854775807)::bigint;
END
$$;

-- Limit, tier, spend and current period of (user, organization), without
-- authorization (admission and the worker's promotion check call it for a
-- chat's owner). The spend is scoped like the limit: to the organization
-- when the group tier decided (and an organization was given), to all the
-- user's chats in every organization when the user or default tier decided
-- (or the config is disabled), so membership of N organizations never
-- multiplies a personal limit. limit_micros NULL means no limit.
CREATE OR REPLACE FUNCTION chatd._usage_limit_status(
    p_user_id uuid,
    p_organization_id uuid
) RETURNS TABLE (
    limit_micros bigint,
    source text,
    spent_micros bigint,
    period_start timestamptz,
    resets_at timestamptz
)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_period chatd.spend_period;
    v_limit bigint;
    v_source text;
    v_start timestamptz;
    v_resets timestamptz;
BEGIN
    SELECT c.period INTO v_period
    FROM chatd.usage_limit_config AS c
    WHERE c.singleton;
    SELECT r.limit_micros, r.source INTO v_limit, v_source
    FROM chatd.resolve_spend_limit(p_user_id, p_organization_id) AS r;
    SELECT b.period_start, b.resets_at INTO v_start, v_resets
    FROM chatd.spend_period_bounds(coalesce(v_period, 'month'), now()) AS b;
    RETURN QUERY SELECT
        v_limit,
        v_source,
        chatd.spend_in_period(
            p_user_id, v_start, v_resets,
            CASE WHEN v_source = 'group' THEN p_organization_id END
        ),
        v_start,
        v_resets;
END
$$;

-- The application's read of chatd._usage_limit_status, for the acting user.
-- CD002 unless the user exists and, when an organization is given, is a
-- member of it (the auth boundary of every application function). With no
-- organization it reports the user's global view (every organization).
CREATE OR REPLACE FUNCTION chatd.usage_limit_status(
    p_user_id uuid,
    p_organization_id uuid DEFAULT NULL
) RETURNS TABLE (
    limit_micros bigint,
    source text,
    spent_micros bigint,
    period_start timestamptz,
    resets_at timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF p_user_id IS NULL OR NOT EXISTS (SELECT 1 FROM chatd.users AS u WHERE u.id = p_user_id) THEN
        RAISE EXCEPTION 'user % may not read usage limits: unknown user', p_user_id USING ERRCODE = 'CD002';
    END IF;
    IF p_organization_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM chatd.organization_members AS om
        WHERE om.organization_id = p_organization_id AND om.user_id = p_user_id
    ) THEN
        RAISE EXCEPTION 'user % may not read usage limits of organization %: not a member',
            p_user_id, p_organization_id
            USING ERRCODE = 'CD002';
    END IF;
    RETURN QUERY SELECT * FROM chatd._usage_limit_status(p_user_id, p_organization_id);
END
$$;

-- Serializes the admissions of the given users: locks their rows in
-- chatd.users (FOR NO KEY UPDATE), in id order, until the transaction ends.
-- Only chatd_owner can take these locks: chatd_app, chatd_worker and other
-- logins have no privilege on chatd.users (a row lock needs UPDATE), so no
-- role can hold a user's admissions hostage the way a documented advisory
-- key could be. NO KEY UPDATE does not conflict with the KEY SHARE locks of
-- foreign-key checks (a new chat, message or membership of the user), only
-- with other admissions and with updates of the user row itself.
CREATE OR REPLACE FUNCTION chatd._lock_admissions(p_user_ids uuid[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM chatd.users AS u
    WHERE u.id = ANY (p_user_ids)
    ORDER BY u.id
    FOR NO KEY UPDATE;
END
$$;

-- Whether spend limits are enabled (usage_limit_config.enabled).
CREATE OR REPLACE FUNCTION chatd._spend_limits_enabled()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT coalesce((SELECT c.enabled FROM chatd.usage_limit_config AS c WHERE c.singleton), FALSE)
$$;

-- The admission decision for (user, organization), without raising: NULL
-- when admitted, else {kind: "usage_limit", spent_micros, limit_micros,
-- resets_at, source}. p_pending_micros is spend this transaction is about
-- to record but has not inserted yet (finish_turn decides whether to promote
-- the queue head before it inserts the turn's assistant message); it counts
-- as spent. Takes the user's admission lock first (see admit_spend); a
-- disabled config admits at once without locking.
CREATE OR REPLACE FUNCTION chatd._spend_refusal(
    p_user_id uuid,
    p_organization_id uuid,
    p_pending_micros bigint DEFAULT 0
) RETURNS jsonb
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_status record;
    v_spent bigint;
BEGIN
    IF NOT chatd._spend_limits_enabled() THEN
        RETURN NULL;
    END IF;
    -- The ledger trigger is deferred to commit (sql/52_spend_ledger.sql):
    -- costs this transaction already wrote (a finish before the promotion of
    -- its queue) go into the ledger now, so they count here. Later cost
    -- writes of the transaction are deferred again.
    SET CONSTRAINTS chatd.messages_spend_ledger IMMEDIATE;
    SET CONSTRAINTS chatd.messages_spend_ledger DEFERRED;

    IF current_setting('transaction_isolation') = 'repeatable read' THEN
        RAISE EXCEPTION 'chatd.admit_spend cannot run under REPEATABLE READ'
        USING
            ERRCODE = 'invalid_transaction_state',
            DETAIL = 'The transaction snapshot may predate the per-user admission lock, '
            || 'so concurrent admissions could pass on stale spend.',
            HINT = 'Use READ COMMITTED (the default) or SERIALIZABLE.';
    END IF;

    PERFORM chatd._lock_admissions(ARRAY[p_user_id]);

    -- A new statement, hence (READ COMMITTED) a snapshot taken after the lock
    -- was granted.
    SELECT s.limit_micros, s.source, s.spent_micros, s.resets_at
    INTO v_status
    FROM chatd._usage_limit_status(p_user_id, p_organization_id) AS s;

    v_spent := least(
        v_status.spent_micros::numeric + greatest(coalesce(p_pending_micros, 0), 0), 9223372036854775807
    )::bigint;
    IF v_status.limit_micros IS NULL OR v_spent < v_status.limit_micros THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object(
        'kind', 'usage_limit',
        'spent_micros', v_spent,
        'limit_micros', v_status.limit_micros,
        'resets_at', to_char(v_status.resets_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'source', v_status.source
    );
END
$$;

-- The ChatError a chat keeps in last_error when the spend limit refused to
-- send its queue head (finish_turn, finish_turns, interrupt_chat): kind
-- usage_limit, not retryable, the numbers of the refusal, and the same JSON
-- as admit_spend's DETAIL in detail. NULL for NULL (admitted).
CREATE OR REPLACE FUNCTION chatd._usage_limit_error(p_refusal jsonb)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    RETURN CASE WHEN p_refusal IS NOT NULL THEN jsonb_build_object(
        'message', format(
            'chat spend limit reached: %s of %s micro-dollars spent this period; '
            'the queued message was not sent (the limit, %s tier, resets at %s)',
            p_refusal ->> 'spent_micros', p_refusal ->> 'limit_micros',
            p_refusal ->> 'source', p_refusal ->> 'resets_at'
        ),
        'kind', 'usage_limit',
        'retryable', FALSE,
        'spent_micros', p_refusal -> 'spent_micros',
        'limit_micros', p_refusal -> 'limit_micros',
        'resets_at', p_refusal -> 'resets_at',
        'detail', (p_refusal - 'source')::text
    ) END;
END
$$;

-- Admission check, called by create_chat, send_message (every message,
-- queued or sent at once), promote_queued_message and edit_message before
-- they record anything. Refuses with SQLSTATE CD006 when the user's spend
-- in the current period has reached the limit; DETAIL is the JSON
-- {"kind":"usage_limit","spent_micros":N,"limit_micros":N,
-- "resets_at":"YYYY-MM-DDTHH:MI:SSZ"}.
--
-- Concurrency (docs/spend-limits.md): the admissions of one user are
-- serialized by a row lock on the user's row in chatd.users
-- (chatd._lock_admissions, FOR NO KEY UPDATE), which no role but
-- chatd_owner can take. The lock is held until the calling transaction
-- ends, and spend is read by a statement that starts after the lock is
-- granted, so under READ COMMITTED an admission sees everything committed
-- by the previous admission's transaction of that user. REPEATABLE READ is
-- refused (its snapshot may predate the lock). Different users lock
-- different rows. A disabled config admits without locking.
CREATE OR REPLACE FUNCTION chatd.admit_spend(
    p_user_id uuid,
    p_organization_id uuid
) RETURNS void
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
DECLARE
    v_refusal jsonb;
BEGIN
    v_refusal := chatd._spend_refusal(p_user_id, p_organization_id);
    IF v_refusal IS NOT NULL THEN
        RAISE EXCEPTION 'chat spend limit reached: % of % micro-dollars spent this period',
        v_refusal ->> 'spent_micros', v_refusal ->> 'limit_micros'
        USING
            ERRCODE = 'CD006',
            DETAIL = (v_refusal - 'source')::text,
            HINT = format('The limit (%s tier) resets at %s.', v_refusal ->> 'source', v_refusal ->> 'resets_at');
    END IF;
END
$$;
