-- Spend reporting views (docs/spend-limits.md). Every view reports the
-- current period of usage_limit_config.period (UTC), whether or not limits
-- are enabled, and counts soft-deleted messages (soft delete keeps cost
-- history). A message belongs to the period in which it was created.

-- The current period: one row, [period_start, resets_at).
CREATE OR REPLACE VIEW chatd.spend_current_period AS
SELECT
    c.period,
    b.period_start,
    b.resets_at
FROM chatd.usage_limit_config AS c
CROSS JOIN LATERAL chatd.spend_period_bounds(c.period, now()) AS b
WHERE c.singleton;

-- Spend per organization (of the chats in it) in the current period; one
-- row per organization, zero when nothing was spent. Read from
-- chatd.spend_ledger (sql/52_spend_ledger.sql): one row per user and day of
-- the period, whatever the number of messages.
CREATE OR REPLACE VIEW chatd.spend_by_organization AS
SELECT
    o.id AS organization_id,
    o.name AS organization_name,
    p.period_start,
    p.resets_at,
    least(coalesce(s.spent_micros, 0), 9223372036854775807)::bigint AS spent_micros,
    coalesce(s.users, 0)::bigint AS users,
    coalesce(s.priced_messages, 0)::bigint AS priced_messages
FROM chatd.organizations AS o
CROSS JOIN chatd.spend_current_period AS p
LEFT JOIN LATERAL (
    SELECT
        sum(l.spent_micros) AS spent_micros,
        count(DISTINCT l.user_id) FILTER (WHERE l.priced_messages > 0) AS users,
        sum(l.priced_messages) AS priced_messages
    FROM chatd.spend_ledger AS l
    WHERE
        l.organization_id = o.id
        AND l.day >= (p.period_start AT TIME ZONE 'UTC')::date
        AND l.day < (p.resets_at AT TIME ZONE 'UTC')::date
) AS s ON TRUE;

-- Spend per user in the current period over every organization (the scope
-- of user and default limits), for users who spent anything (at least one
-- priced message); with the limit that applies when no organization is
-- given (chatd.resolve_spend_limit with a NULL organization: override, else
-- smallest group limit anywhere, else default) and its source tier. Read
-- from chatd.spend_ledger.
CREATE OR REPLACE VIEW chatd.spend_by_user AS
WITH spend AS (
    SELECT
        l.user_id,
        sum(l.spent_micros) AS spent_micros,
        sum(l.priced_messages) AS priced_messages,
        count(DISTINCT l.organization_id) FILTER (WHERE l.priced_messages > 0) AS organizations
    FROM chatd.spend_current_period AS p
    INNER JOIN chatd.spend_ledger AS l
        ON
            (p.period_start AT TIME ZONE 'UTC')::date <= l.day
            AND (p.resets_at AT TIME ZONE 'UTC')::date > l.day
    GROUP BY l.user_id
    HAVING sum(l.priced_messages) > 0
)

SELECT
    u.id AS user_id,
    u.username,
    p.period_start,
    p.resets_at,
    least(s.spent_micros, 9223372036854775807)::bigint AS spent_micros,
    s.priced_messages::bigint AS priced_messages,
    s.organizations,
    l.limit_micros,
    l.source AS limit_source
FROM spend AS s
INNER JOIN chatd.users AS u ON s.user_id = u.id
CROSS JOIN chatd.spend_current_period AS p
CROSS JOIN LATERAL chatd.resolve_spend_limit(u.id, NULL) AS l;

-- Spend and usage per model config in the current period, over the messages
-- that name a model config (assistant messages); unpriced_messages counts
-- messages with usage but no cost (an unpriced model).
CREATE OR REPLACE VIEW chatd.spend_by_model AS
SELECT
    mc.id AS model_config_id,
    pr.name AS provider_name,
    mc.model,
    mc.display_name,
    p.period_start,
    p.resets_at,
    coalesce(sum(m.total_cost_micros), 0)::bigint AS spent_micros,
    count(*) AS messages,
    count(*) FILTER (
        WHERE m.total_cost_micros IS NULL
        AND num_nonnulls(m.input_tokens, m.output_tokens, m.cache_read_tokens, m.cache_write_tokens) > 0
    ) AS unpriced_messages,
    coalesce(sum(m.input_tokens), 0)::bigint AS input_tokens,
    coalesce(sum(m.output_tokens), 0)::bigint AS output_tokens,
    coalesce(sum(m.reasoning_tokens), 0)::bigint AS reasoning_tokens,
    coalesce(sum(m.cache_read_tokens), 0)::bigint AS cache_read_tokens,
    coalesce(sum(m.cache_write_tokens), 0)::bigint AS cache_write_tokens
FROM chatd.spend_current_period AS p
INNER JOIN chatd.messages AS m
    ON p.period_start <= m.created_at AND p.resets_at > m.created_at
INNER JOIN chatd.model_configs AS mc ON m.model_config_id = mc.id
INNER JOIN chatd.providers AS pr ON mc.provider_id = pr.id
GROUP BY mc.id, pr.name, mc.model, mc.display_name, p.period_start, p.resets_at;

-- Enabled model configs with no price at all: their messages cost NULL and
-- never count against a spend limit.
CREATE OR REPLACE VIEW chatd.models_without_prices AS
SELECT
    mc.id AS model_config_id,
    pr.name AS provider_name,
    mc.model,
    mc.display_name,
    mc.is_default,
    mc.created_at
FROM chatd.model_configs AS mc
INNER JOIN chatd.providers AS pr ON mc.provider_id = pr.id
WHERE
    mc.enabled
    AND mc.input_price_per_mtok IS NULL
    AND mc.output_price_per_mtok IS NULL
    AND mc.cache_read_price_per_mtok IS NULL
    AND mc.cache_write_price_per_mtok IS NULL;
