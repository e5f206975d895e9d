-- The models an application may offer its users (GET /api/models of
-- `chatd serve`, docs/http.md).

-- Contract: the enabled model configurations of enabled providers, default
-- first, then by display name: id, provider (its name), model,
-- display_name, context_limit, max_output_tokens, is_default and the
-- prices in USD per million tokens (NULL: unpriced). API keys, base URLs
-- and header names of providers are never returned. CD002 unless the
-- acting user exists (the same boundary as every application function).
CREATE OR REPLACE FUNCTION chatd.list_models(p_user_id uuid)
RETURNS TABLE (
    id uuid,
    provider text,
    model text,
    display_name text,
    context_limit integer,
    max_output_tokens integer,
    is_default boolean,
    input_price_per_mtok numeric,
    output_price_per_mtok numeric
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, chatd, pg_temp
AS $$
BEGIN
    IF p_user_id IS NULL OR NOT EXISTS (SELECT 1 FROM chatd.users AS u WHERE u.id = p_user_id) THEN
        RAISE EXCEPTION 'user % may not list models: unknown user', p_user_id USING ERRCODE = 'CD002';
    END IF;
    RETURN QUERY
    SELECT
        m.id,
        p.name,
        m.model,
        m.display_name,
        m.context_limit,
        m.max_output_tokens,
        m.is_default,
        m.input_price_per_mtok,
        m.output_price_per_mtok
    FROM chatd.model_configs AS m
    INNER JOIN chatd.providers AS p ON m.provider_id = p.id
    WHERE m.enabled AND p.enabled
    ORDER BY m.is_default DESC, m.display_name ASC, m.id ASC;
END
$$;
