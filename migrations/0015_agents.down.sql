-- Reverts 0015. PostgreSQL cannot drop an enum value: awaiting_agents
-- stays in chatd.chat_status, unused (0015's ADD VALUE IF NOT EXISTS
-- accepts it on the way up again). A parent still awaiting its children
-- goes back to waiting; its spawn calls stay unanswered until a user
-- message starts a new turn.
UPDATE chatd.chats SET status = 'waiting'
WHERE status = 'awaiting_agents';

-- the repeatable trigger that reads the columns dropped below (sql/ re-creates it)
DROP TRIGGER IF EXISTS chats_40_agent_answer ON chatd.chats;

ALTER TABLE chatd.settings
DROP COLUMN max_agent_fanout,
DROP COLUMN max_agent_depth;

ALTER TABLE chatd.model_configs
DROP COLUMN agents;

ALTER TABLE chatd.chats
DROP COLUMN agents,
DROP COLUMN parent_tool_call_id;
