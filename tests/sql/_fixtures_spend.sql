-- Spend-limit fixture factories (loaded after _fixtures.sql into the test
-- template). Tests name only what they care about.

-- Sets the usage-limit configuration singleton.
CREATE FUNCTION chatd_test.spend_config(
    p_enabled boolean DEFAULT TRUE,
    p_default_limit_micros bigint DEFAULT NULL,
    p_period chatd.spend_period DEFAULT 'month'
) RETURNS void
LANGUAGE sql AS $$
    UPDATE chatd.usage_limit_config
    SET enabled = p_enabled, default_limit_micros = p_default_limit_micros, period = p_period,
        updated_at = now()
    WHERE singleton
$$;

-- An assistant message of p_chat with the given recorded cost (what
-- finish_turn records for a turn), optionally soft-deleted.
CREATE FUNCTION chatd_test.spend(
    p_chat uuid,
    p_cost_micros bigint,
    p_created_at timestamptz DEFAULT now(),
    p_deleted boolean DEFAULT FALSE
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
BEGIN
    v_id := chatd_test.message(p_chat, 'assistant', 'reply', p_cost_micros, p_created_at);
    IF p_deleted THEN
        UPDATE chatd.messages SET deleted = TRUE WHERE id = v_id;
    END IF;
    RETURN v_id;
END
$$;

-- An assistant message of p_chat with token usage, priced by the chat's
-- model through chatd.message_cost_micros (as finish_turn does).
CREATE FUNCTION chatd_test.usage_message(
    p_chat uuid,
    p_input_tokens bigint DEFAULT NULL,
    p_output_tokens bigint DEFAULT NULL,
    p_reasoning_tokens bigint DEFAULT NULL,
    p_cache_read_tokens bigint DEFAULT NULL,
    p_cache_write_tokens bigint DEFAULT NULL,
    p_created_at timestamptz DEFAULT now()
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO chatd.messages (
        chat_id, role, content, model_config_id,
        input_tokens, output_tokens, reasoning_tokens, cache_read_tokens, cache_write_tokens,
        total_cost_micros, created_at
    )
    SELECT
        c.id, 'assistant', '[{"type": "text", "text": "reply"}]'::jsonb, c.model_config_id,
        p_input_tokens, p_output_tokens, p_reasoning_tokens, p_cache_read_tokens, p_cache_write_tokens,
        chatd.message_cost_micros(
            c.model_config_id, p_input_tokens, p_output_tokens, p_cache_read_tokens, p_cache_write_tokens
        ),
        p_created_at
    FROM chatd.chats AS c WHERE c.id = p_chat
    RETURNING id
$$;
