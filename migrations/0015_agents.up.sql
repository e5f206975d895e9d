-- 0015 sub-agents spawned by the model (issue 14, DESIGN.md section 11,
-- docs/agents.md).
--
-- chat_status awaiting_agents: a parent whose only unanswered tool calls
-- are spawn_agent calls waits here; no worker claims it. The trigger
-- chatd.chats_agent_answer (sql/34_agents.sql) writes each child's final
-- answer into the parent as the result of its spawn call and makes the
-- parent runnable once the last one is in. ADD VALUE commits with this
-- migration, before sql/ (which uses it) is applied.
--
-- chats.parent_tool_call_id: the spawn_agent call of the parent that a
-- child answers (NULL for a chat the application created).
-- chats.agents / model_configs.agents: the model may spawn sub-agents
-- (built-in tool spawn_agent) in this chat / with this model; either one
-- enables it. settings.max_agent_depth (levels below the root) and
-- max_agent_fanout (spawn calls per model step) bound the tree.
--
-- Every ADD COLUMN here is nullable or has a constant default: no table
-- rewrite, only a brief ACCESS EXCLUSIVE lock (the migrator's lock_timeout
-- applies).
ALTER TYPE chatd.chat_status ADD VALUE IF NOT EXISTS 'awaiting_agents' AFTER 'requires_action';

ALTER TABLE chatd.chats
ADD COLUMN parent_tool_call_id text CHECK (parent_tool_call_id ~ '^[A-Za-z0-9_.:-]{1,100}$'),
ADD COLUMN agents boolean NOT NULL DEFAULT FALSE;

ALTER TABLE chatd.model_configs
ADD COLUMN agents boolean NOT NULL DEFAULT FALSE;

ALTER TABLE chatd.settings
ADD COLUMN max_agent_depth integer NOT NULL DEFAULT 3 CHECK (max_agent_depth BETWEEN 0 AND 10),
ADD COLUMN max_agent_fanout integer NOT NULL DEFAULT 8 CHECK (max_agent_fanout BETWEEN 1 AND 64);
