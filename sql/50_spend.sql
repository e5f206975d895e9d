-- Spend limits and cost accounting (DESIGN.md section 7, docs/spend-limits.md).
--
--   message_cost_micros   cost of one message from its model's prices
--   resolve_spend_limit   effective limit of (user, organization) and its tier
--   spend_period_bounds   [period_start, resets_at) of the UTC period around a time
--   spend_in_period       a user's recorded spend in a time range
--   usage_limit_status    limit, tier, spend and period of (user, organization)
--   admit_spend           admission check of create_chat / send_message /
--                         edit_message: raises CD006 when spent >= limit
--
-- Money is in micro-dollars (bigint). Prices are USD per million tokens, so a
-- price is also micro-dollars per token: cost = sum(tokens x price).

-- Cost of a message in micro-dollars, rounded up once over the exact sum of
-- the buckets (not per bucket). Reasoning tokens are part of the output
-- tokens and are not billed again, so they are not a parameter.
--
-- NULL when the model is unknown, when it has no price at all (unpriced), or
-- when there is no usage (every token count NULL). A bucket with tokens whose
-- own price is NULL on a model that has some price costs 0: a partially priced
-- model lists exactly what it bills (a provider without prompt caching has no
-- cache prices). chatd.models_without_prices lists the unpriced models.
CREATE OR REPLACE FUNCTION chatd.message_cost_micros(
    p_model_config_id uuid,
    p_input_tokens bigint,
    p_output_tokens bigint,
    p_cache_read_tokens bigint,
    p_cache_write_tokens bigint
) RETURNS bigint
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT ceil(
        coalesce(p_input_tokens, 0) * coalesce(mc.input_price_per_mtok, 0)
        + coalesce(p_output_tokens, 0) * coalesce(mc.output_price_per_mtok, 0)
        + coalesce(p_cache_read_tokens, 0) * coalesce(mc.cache_read_price_per_mtok, 0)
        + coalesce(p_cache_write_tokens, 0) * coalesce(mc.cache_write_price_per_mtok, 0)
    )::bigint
    FROM chatd.model_configs AS mc
    WHERE
        mc.id = p_model_config_id
        AND num_nonnulls(
            mc.input_price_per_mtok, mc.output_price_per_mtok,
            mc.cache_read_price_per_mtok, mc.cache_write_price_per_mtok
        ) > 0
        AND num_nonnulls(
            p_input_tokens, p_output_tokens, p_cache_read_tokens, p_cache_write_tokens
        ) > 0
$$;

COMMENT ON FUNCTION chatd.message_cost_micros(uuid, bigint, bigint, bigint, bigint) IS
'Cost in micro-dollars, rounded up over the exact sum; NULL when the model is unpriced or there is no usage. '
'A bucket whose own price is NULL costs 0 on a partially priced model.';

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
CREATE OR REPLACE FUNCTION chatd.spend_in_period(
    p_user_id uuid,
    p_start timestamptz,
    p_end timestamptz,
    p_organization_id uuid DEFAULT NULL
) RETURNS bigint
LANGUAGE sql
STABLE
PARALLEL SAFE
SET search_path = pg_catalog, chatd, pg_temp
AS $$
    SELECT coalesce(sum(m.total_cost_micros), 0)::bigint
    FROM chatd.chats AS c
    INNER JOIN chatd.messages AS m ON m.chat_id = c.id
    WHERE
        c.owner_id = p_user_id
        AND (p_organization_id IS NULL OR c.organization_id = p_organization_id)
        AND m.created_at >= p_start
        AND m.created_at < p_end
        AND m.total_cost_micros IS NOT NULL
$$;

-- Limit, tier, spend and current period of (user, organization). The spend
-- is scoped like the limit: to the organization when the group tier decided
-- (and an organization was given), to all the user's chats in every
-- organization when the user or default tier decided (or the config is
-- disabled), so membership of N organizations never multiplies a personal
-- limit. limit_micros NULL means no limit.
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

-- Admission check, called by create_chat, send_message (immediate sends) and
-- edit_message before they record anything. Refuses with SQLSTATE CD006 when
-- the user's spend in the current period has reached the limit; DETAIL is
-- the JSON {"kind":"usage_limit","spent_micros":N,"limit_micros":N,
-- "resets_at":"YYYY-MM-DDTHH:MI:SSZ"}.
--
-- Concurrency (docs/spend-limits.md): the admissions of one user are
-- serialized by a transaction-scoped advisory lock in lock class
-- 1667527536 (0x63647370, "cdsp"), two-key form
-- pg_advisory_xact_lock(1667527536, uuid_hash(user_id)). The lock is held
-- until the calling transaction ends, and spend is read by a statement that
-- starts after the lock is granted, so under READ COMMITTED an admission sees
-- everything committed by the previous admission's transaction of that user.
-- REPEATABLE READ is refused (its snapshot may predate the lock). Different
-- users take different keys (only a 32-bit hash collision makes two users
-- share one). A disabled config admits without locking.
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
    v_enabled boolean;
    v_status record;
BEGIN
    SELECT c.enabled INTO v_enabled
    FROM chatd.usage_limit_config AS c
    WHERE c.singleton;
    IF NOT coalesce(v_enabled, FALSE) THEN
        RETURN;
    END IF;

    IF current_setting('transaction_isolation') = 'repeatable read' THEN
        RAISE EXCEPTION 'chatd.admit_spend cannot run under REPEATABLE READ'
        USING
            ERRCODE = 'invalid_transaction_state',
            DETAIL = 'The transaction snapshot may predate the per-user admission lock, '
            || 'so concurrent admissions could pass on stale spend.',
            HINT = 'Use READ COMMITTED (the default) or SERIALIZABLE.';
    END IF;

    -- Lock class 0x63647370 ("cdsp"): chatd spend admission, one key per user.
    PERFORM pg_advisory_xact_lock(1667527536, uuid_hash(p_user_id));

    -- A new statement, hence (READ COMMITTED) a snapshot taken after the lock
    -- was granted.
    SELECT s.limit_micros, s.source, s.spent_micros, s.resets_at
    INTO v_status
    FROM chatd.usage_limit_status(p_user_id, p_organization_id) AS s;

    IF v_status.limit_micros IS NOT NULL AND v_status.spent_micros >= v_status.limit_micros THEN
        RAISE EXCEPTION 'chat spend limit reached: % of % micro-dollars spent this period',
        v_status.spent_micros, v_status.limit_micros
        USING
            ERRCODE = 'CD006',
            DETAIL = jsonb_build_object(
                'kind', 'usage_limit',
                'spent_micros', v_status.spent_micros,
                'limit_micros', v_status.limit_micros,
                'resets_at', to_char(v_status.resets_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
            )::text,
            HINT = format('The limit (%s tier) resets at %s.', v_status.source,
                to_char(v_status.resets_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'));
    END IF;
END
$$;
