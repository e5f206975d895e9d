-- 0001 initial schema: identity, LLM configuration, chats, messages, queue,
-- stream parts, spend-limit configuration and settings (DESIGN.md section 3).
--
-- Only tables, types, indexes and constraints live here. Functions, triggers,
-- views and grants are repeatable definitions in sql/ and are re-applied by
-- the migrator whenever their text changes.

CREATE SCHEMA IF NOT EXISTS chatd;

-- ---------------------------------------------------------------------------
-- Types
-- ---------------------------------------------------------------------------

CREATE TYPE chatd.chat_status AS ENUM (
    'waiting',          -- idle, waiting for the user
    'pending',          -- runnable, owned by no worker
    'running',          -- owned by one worker under one lease
    'error',            -- the last turn failed; last_error says why
    'requires_action'   -- reserved for client-executed tools
);

CREATE TYPE chatd.client_type AS ENUM ('ui', 'api');

CREATE TYPE chatd.provider_kind AS ENUM ('openai', 'openai-compat', 'anthropic');

CREATE TYPE chatd.message_role AS ENUM ('system', 'user', 'assistant', 'tool');

CREATE TYPE chatd.message_visibility AS ENUM ('user', 'model', 'both');

CREATE TYPE chatd.spend_period AS ENUM ('day', 'week', 'month');

-- ---------------------------------------------------------------------------
-- Identity. Minimal, so chatd runs standalone; a host application may sync
-- its own ids into these tables.
-- ---------------------------------------------------------------------------

CREATE TABLE chatd.organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chatd.users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username text NOT NULL UNIQUE CHECK (length(username) BETWEEN 1 AND 200),
    display_name text,
    -- personal spend limit override, micro-dollars per period (NULL: none)
    chat_spend_limit_micros bigint CHECK (chat_spend_limit_micros >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chatd.organization_members (
    organization_id uuid NOT NULL REFERENCES chatd.organizations (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES chatd.users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, user_id)
);

CREATE INDEX organization_members_user_idx ON chatd.organization_members (user_id);

CREATE TABLE chatd.groups (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES chatd.organizations (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    chat_spend_limit_micros bigint CHECK (chat_spend_limit_micros >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name),
    -- target of the composite foreign key in group_members
    UNIQUE (organization_id, id)
);

-- A user can only be in a group of an organization they belong to: both
-- composite keys carry the group's organization.
CREATE TABLE chatd.group_members (
    organization_id uuid NOT NULL,
    group_id uuid NOT NULL,
    user_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id),
    FOREIGN KEY (organization_id, group_id)
    REFERENCES chatd.groups (organization_id, id) ON DELETE CASCADE,
    FOREIGN KEY (organization_id, user_id)
    REFERENCES chatd.organization_members (organization_id, user_id) ON DELETE CASCADE
);

CREATE INDEX group_members_user_idx ON chatd.group_members (user_id, organization_id);

CREATE TABLE chatd.workspaces (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES chatd.organizations (id) ON DELETE CASCADE,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, name),
    -- target of the composite foreign key in chats
    UNIQUE (organization_id, id)
);

-- ---------------------------------------------------------------------------
-- LLM configuration
-- ---------------------------------------------------------------------------

CREATE TABLE chatd.providers (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    kind chatd.provider_kind NOT NULL,
    base_url text CHECK (base_url ~ '^https?://'),
    -- The NAME of the environment variable holding the API key. Secrets never
    -- live in the database.
    api_key_env text CHECK (api_key_env ~ '^[A-Za-z_][A-Za-z0-9_]*$'),
    enabled boolean NOT NULL DEFAULT TRUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- an OpenAI-compatible server has no default endpoint
    CHECK (kind <> 'openai-compat' OR base_url IS NOT NULL)
);

CREATE TABLE chatd.model_configs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider_id uuid NOT NULL REFERENCES chatd.providers (id),
    model text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 200),
    context_limit integer NOT NULL CHECK (context_limit > 0),
    max_output_tokens integer NOT NULL CHECK (max_output_tokens > 0),
    -- USD per million tokens; NULL means unpriced
    input_price_per_mtok numeric(14, 6) CHECK (input_price_per_mtok >= 0),
    output_price_per_mtok numeric(14, 6) CHECK (output_price_per_mtok >= 0),
    cache_read_price_per_mtok numeric(14, 6) CHECK (cache_read_price_per_mtok >= 0),
    cache_write_price_per_mtok numeric(14, 6) CHECK (cache_write_price_per_mtok >= 0),
    enabled boolean NOT NULL DEFAULT TRUE,
    is_default boolean NOT NULL DEFAULT FALSE,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider_id, model),
    CHECK (enabled OR NOT is_default)
);

-- At most one default model.
CREATE UNIQUE INDEX model_configs_one_default_idx
ON chatd.model_configs (is_default) WHERE is_default;

-- ---------------------------------------------------------------------------
-- Chats
-- ---------------------------------------------------------------------------

CREATE TABLE chatd.chats (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES chatd.organizations (id),
    owner_id uuid NOT NULL REFERENCES chatd.users (id),
    workspace_id uuid,
    parent_chat_id uuid,
    -- the root's own id for a root chat
    root_chat_id uuid NOT NULL,
    title text NOT NULL DEFAULT '' CHECK (length(title) <= 1000),
    status chatd.chat_status NOT NULL DEFAULT 'pending',
    client_type chatd.client_type NOT NULL DEFAULT 'api',
    model_config_id uuid NOT NULL REFERENCES chatd.model_configs (id),
    archived boolean NOT NULL DEFAULT FALSE,
    worker_id text CHECK (length(worker_id) BETWEEN 1 AND 200),
    -- fencing token: bumped on every claim; every worker write names it
    lease bigint NOT NULL DEFAULT 0 CHECK (lease >= 0),
    started_at timestamptz,
    heartbeat_at timestamptz,
    -- retry counter of the current turn
    attempt integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    -- times the current turn was taken back from a stale worker
    recoveries integer NOT NULL DEFAULT 0 CHECK (recoveries >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    retry_state jsonb CHECK (jsonb_typeof(retry_state) = 'object'),
    last_error jsonb CHECK (
        jsonb_typeof(last_error) = 'object'
        AND last_error ? 'message'
        AND last_error ? 'kind'
    ),
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- targets of the composite foreign keys below
    UNIQUE (organization_id, id),
    UNIQUE (id, organization_id, client_type),
    -- a workspace of another organization cannot be bound
    FOREIGN KEY (organization_id, workspace_id)
    REFERENCES chatd.workspaces (organization_id, id),
    -- a sub-agent chat lives in its parent's organization and inherits the
    -- parent's client type
    FOREIGN KEY (parent_chat_id, organization_id, client_type)
    REFERENCES chatd.chats (id, organization_id, client_type) ON UPDATE CASCADE,
    FOREIGN KEY (organization_id, root_chat_id)
    REFERENCES chatd.chats (organization_id, id),
    CHECK ((parent_chat_id IS NULL) = (root_chat_id = id)),
    CHECK (parent_chat_id IS DISTINCT FROM id),
    -- exactly the running chat has an owner worker and a heartbeat
    CHECK ((status = 'running') = (worker_id IS NOT NULL)),
    CHECK (status <> 'running' OR (started_at IS NOT NULL AND heartbeat_at IS NOT NULL)),
    CHECK (status <> 'error' OR last_error IS NOT NULL)
);

-- claim: oldest due runnable chat first
CREATE INDEX chats_runnable_idx ON chatd.chats (next_attempt_at)
WHERE status = 'pending' AND NOT archived;
-- stale recovery scans running chats by heartbeat
CREATE INDEX chats_running_heartbeat_idx ON chatd.chats (heartbeat_at)
WHERE status = 'running';
CREATE INDEX chats_owner_idx ON chatd.chats (owner_id, organization_id, updated_at DESC);
CREATE INDEX chats_parent_idx ON chatd.chats (parent_chat_id) WHERE parent_chat_id IS NOT NULL;
CREATE INDEX chats_root_idx ON chatd.chats (root_chat_id);
CREATE INDEX chats_workspace_idx ON chatd.chats (workspace_id) WHERE workspace_id IS NOT NULL;

-- A message's content is an array of typed parts.
CREATE TABLE chatd.messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_id uuid NOT NULL REFERENCES chatd.chats (id) ON DELETE CASCADE,
    role chatd.message_role NOT NULL,
    content jsonb NOT NULL CHECK (
        jsonb_typeof(content) = 'array'
        AND NOT jsonb_path_exists(
            content,
            '$[*] ? (@.type() != "object" || !(@.type == "text" || @.type == "reasoning" || @.type == "tool-call" || @.type == "tool-result" || @.type == "file"))'
        )
    ),
    visibility chatd.message_visibility NOT NULL DEFAULT 'both',
    model_config_id uuid REFERENCES chatd.model_configs (id),
    input_tokens bigint CHECK (input_tokens >= 0),
    output_tokens bigint CHECK (output_tokens >= 0),
    reasoning_tokens bigint CHECK (reasoning_tokens >= 0),
    cache_read_tokens bigint CHECK (cache_read_tokens >= 0),
    cache_write_tokens bigint CHECK (cache_write_tokens >= 0),
    -- micro-dollars, rounded up; NULL when the model is unpriced
    total_cost_micros bigint CHECK (total_cost_micros >= 0),
    runtime_ms bigint CHECK (runtime_ms >= 0),
    provider_response_id text,
    -- soft delete keeps cost history
    deleted boolean NOT NULL DEFAULT FALSE,
    created_by uuid REFERENCES chatd.users (id),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX messages_chat_idx ON chatd.messages (chat_id, id);
-- spend queries sum priced messages of a user's chats over a period
CREATE INDEX messages_cost_idx ON chatd.messages (chat_id, created_at)
INCLUDE (total_cost_micros) WHERE total_cost_micros IS NOT NULL;

-- Messages sent while the chat is busy; FIFO by position. The limit (20 by
-- default, settings.queue_limit) is enforced by send_message.
CREATE TABLE chatd.queued_messages (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chat_id uuid NOT NULL REFERENCES chatd.chats (id) ON DELETE CASCADE,
    position bigint NOT NULL,
    content jsonb NOT NULL CHECK (
        jsonb_typeof(content) = 'array'
        AND NOT jsonb_path_exists(
            content,
            '$[*] ? (@.type() != "object" || !(@.type == "text" || @.type == "reasoning" || @.type == "tool-call" || @.type == "tool-result" || @.type == "file"))'
        )
    ),
    model_config_id uuid REFERENCES chatd.model_configs (id),
    created_by uuid REFERENCES chatd.users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chat_id, position)
);

-- Partial output of the running turn, so a subscriber that joins mid-turn can
-- replay what it missed. UNLOGGED: losing it in a crash loses only replay of
-- a turn that is re-run anyway. Dropped by the janitor after the turn ends.
CREATE UNLOGGED TABLE chatd.stream_parts (
    chat_id uuid NOT NULL REFERENCES chatd.chats (id) ON DELETE CASCADE,
    lease bigint NOT NULL,
    seq integer NOT NULL CHECK (seq >= 0),
    parts jsonb NOT NULL CHECK (jsonb_typeof(parts) = 'array'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, lease, seq)
);

CREATE INDEX stream_parts_created_idx ON chatd.stream_parts (created_at);

-- ---------------------------------------------------------------------------
-- Spend limits and settings: singleton rows
-- ---------------------------------------------------------------------------

CREATE TABLE chatd.usage_limit_config (
    singleton boolean PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    enabled boolean NOT NULL DEFAULT FALSE,
    default_limit_micros bigint CHECK (default_limit_micros >= 0),
    -- periods are UTC; weeks start on Monday
    period chatd.spend_period NOT NULL DEFAULT 'month',
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO chatd.usage_limit_config (singleton) VALUES (TRUE);

CREATE TABLE chatd.settings (
    singleton boolean PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    heartbeat_interval interval NOT NULL DEFAULT '5 seconds'
    CHECK (heartbeat_interval > '0'),
    stale_after interval NOT NULL DEFAULT '30 seconds' CHECK (stale_after > '0'),
    -- recoveries of one turn before it goes to error (kind timeout)
    max_recoveries integer NOT NULL DEFAULT 3 CHECK (max_recoveries > 0),
    max_attempts integer NOT NULL DEFAULT 25 CHECK (max_attempts > 0),
    backoff_base interval NOT NULL DEFAULT '1 second' CHECK (backoff_base > '0'),
    backoff_cap interval NOT NULL DEFAULT '60 seconds' CHECK (backoff_cap > '0'),
    startup_timeout interval NOT NULL DEFAULT '60 seconds' CHECK (startup_timeout > '0'),
    queue_limit integer NOT NULL DEFAULT 20 CHECK (queue_limit >= 0),
    stream_part_retention interval NOT NULL DEFAULT '5 minutes'
    CHECK (stream_part_retention >= '0'),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (stale_after > heartbeat_interval),
    CHECK (backoff_cap >= backoff_base)
);

INSERT INTO chatd.settings (singleton) VALUES (TRUE);
