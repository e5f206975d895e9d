"""Every SQL statement chatd's Python sends, by name: the worker's, the
client's, the CLI's and the demo's. Each is (nearly always) one call of a
chatd function: the decisions live in SQL, and one statement is one round
trip. Worker statements take named parameters, the others positional ones.
(The migrator's own ledger statements live with it, in chatd.migrate.)"""

from __future__ import annotations

from typing import Final

# ---------------------------------------------------------------------- worker (chatd.worker)

WORKER_SETTINGS: Final = (
    "SELECT heartbeat_interval_ms, startup_timeout_ms, stale_after_ms FROM chatd.worker_settings()"
)

# One round trip gives a claimed turn everything it needs: lease, model and
# provider, and the prompt.
ACQUIRE_CHATS: Final = (
    "SELECT chat_id, lease, attempt, model, messages, history_complete, tools, context "
    "FROM chatd.acquire_chats(%(worker_id)s, %(limit)s)"
)

# Compaction (docs/context.md): the next part of the history to summarize
# (NULL: none due), and the summary, billed like a step.
TURN_COMPACTION: Final = (
    "SELECT chatd.turn_compaction(%(worker_id)s, %(chat_id)s, %(lease)s, %(force)s, %(limit_tokens)s)"
)
COMMIT_SUMMARY: Final = (
    "SELECT chatd.commit_summary(%(chat_id)s, %(lease)s, %(through_id)s, %(content)s, %(usage)s, "
    "%(provider_response_id)s, %(runtime_ms)s)"
)

# The tool loop (docs/tools.md): a step with tool calls, committed before
# any tool runs; then each worker-run result. Both return {message_id,
# status, pending}: SQL says whether the turn goes on, waits for the
# application (requires_action) or ended (step limit).
COMMIT_TOOL_STEP: Final = (
    "SELECT chatd.commit_tool_step(%(chat_id)s, %(lease)s, %(content)s, %(usage)s, "
    "%(provider_response_id)s, %(runtime_ms)s)"
)

COMMIT_TOOL_RESULTS: Final = "SELECT chatd.commit_tool_results(%(chat_id)s, %(lease)s, %(results)s)"

# The next page of a claimed turn's history (fenced by worker and lease);
# no rows: complete.
TURN_HISTORY: Final = (
    "SELECT id, role, content, bytes FROM chatd.turn_history(%(worker_id)s, %(chat_id)s, %(lease)s, "
    "%(after_id)s, %(limit)s)"
)

HEARTBEAT: Final = "SELECT chat_id FROM chatd.heartbeat(%(worker_id)s, %(chat_ids)s, %(leases)s)"

PUBLISH_PARTS: Final = "SELECT chatd.publish_parts(%(chat_id)s, %(lease)s, %(seq)s, %(parts)s)"

FINISH_TURN: Final = (
    "SELECT chatd.finish_turn(%(chat_id)s, %(lease)s, %(content)s, %(usage)s, "
    "%(provider_response_id)s, %(runtime_ms)s, p_finish_reason => %(finish_reason)s)"
)

# A batch of finished turns, each with its last streamed parts, in one
# statement; lost leases come back with message_id NULL.
FINISH_TURNS: Final = "SELECT chat_id, message_id FROM chatd.finish_turns(%(turns)s)"

SAVE_INTERRUPTED_TURN: Final = (
    "SELECT chatd.save_interrupted_turn(%(chat_id)s, %(lease)s, %(content)s, %(usage)s, "
    "%(provider_response_id)s, %(runtime_ms)s)"
)

# due_in: seconds until the retry is due, on the database's clock (the
# worker wakes then instead of at its next poll)
RECORD_FAILURE: Final = (
    "SELECT status, attempt, next_attempt_at, "
    "extract(epoch FROM next_attempt_at - clock_timestamp())::float8 AS due_in "
    "FROM chatd.record_failure(%(chat_id)s, %(lease)s, %(error)s, %(retry_after_ms)s)"
)

RELEASE_CHATS: Final = "SELECT chatd.release_chats(%(worker_id)s, %(chat_ids)s)"

RECOVER_STALE_CHATS: Final = "SELECT chatd.recover_stale_chats()"

JANITOR: Final = "SELECT chatd.janitor()"

# Preflight: is the schema there (migrations applied)?
SCHEMA_PRESENT: Final = "SELECT to_regprocedure('chatd.acquire_chats(text, integer)') IS NOT NULL"

# ---------------------------------------------------------------------- client (chatd.client)

CREATE_CHAT: Final = (
    "SELECT chatd.create_chat(p_user_id => %s, p_organization_id => %s, p_content => %s, "
    "p_model_config_id => %s, p_title => %s, p_system_prompt => %s, p_workspace_id => %s, "
    "p_parent_chat_id => %s, p_client_type => coalesce(%s, 'api')::chatd.client_type, "
    "p_tools => %s, p_mcp_servers => %s, p_agents => %s)"
)

SEND_MESSAGE: Final = "SELECT chatd.send_message(%s, %s, %s, %s, %s, %s)"

INTERRUPT_CHAT: Final = "SELECT chatd.interrupt_chat(%s, %s)"

SUBMIT_TOOL_RESULTS: Final = "SELECT chatd.submit_tool_results(%s, %s, %s)"

EDIT_MESSAGE: Final = "SELECT chatd.edit_message(%s, %s, %s, %s, %s)"

ARCHIVE_CHAT: Final = "SELECT chatd.archive_chat(%s, %s)"

UNARCHIVE_CHAT: Final = "SELECT chatd.unarchive_chat(%s, %s)"

# Soft deletion of a chat and its sub-agent tree; returns how many chats.
DELETE_CHAT: Final = "SELECT chatd.delete_chat(%s, %s)"

LIST_CHATS: Final = "SELECT to_jsonb(c) FROM chatd.list_chats(%s, %s, %s, %s, %s, %s) AS c"

GET_CHAT_SNAPSHOT: Final = "SELECT chatd.get_chat_snapshot(%s, %s, %s)"

# The newest page instead: (user, chat, after id, page size).
GET_CHAT_SNAPSHOT_NEWEST: Final = "SELECT chatd.get_chat_snapshot(%s, %s, %s, %s, p_newest => TRUE)"

# Stored part batches of several chats of one user: (user, chat ids,
# leases, after seqs, page size per chat).
GET_STREAM_PARTS: Final = "SELECT chat_id, lease, seq, parts FROM chatd.get_stream_parts(%s, %s, %s, %s, %s)"

# ---------------------------------------------------------------------- CLI and demo (admin)

RESOLVE_IDENTITY: Final = (
    "SELECT user_id, organization_id FROM chatd.admin_resolve_identity(%s, %s, %s)"
)

USAGE_LIMIT_CONFIG: Final = (
    "SELECT enabled, default_limit_micros, period::text FROM chatd.usage_limit_config"
)

USAGE_LIMIT_STATUS: Final = (
    "SELECT limit_micros, source, spent_micros, period_start, resets_at "
    "FROM chatd.usage_limit_status(%s, %s)"
)

SET_USAGE_LIMITS: Final = "SELECT chatd.admin_set_usage_limits(%s, %s, %s::chatd.spend_period, %s)"

SET_USER_LIMIT: Final = "SELECT chatd.admin_set_user_limit(%s, %s)"

SET_GROUP_LIMIT: Final = "SELECT chatd.admin_set_group_limit(%s, %s, %s)"

UPSERT_MODEL: Final = "SELECT chatd.admin_upsert_model(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"

LIST_MODELS: Final = (
    "SELECT p.name, m.model, m.display_name, m.is_default, m.enabled, "
    "m.input_price_per_mtok, m.output_price_per_mtok, m.id "
    "FROM chatd.model_configs AS m JOIN chatd.providers AS p ON p.id = m.provider_id "
    "ORDER BY p.name, m.model"
)

UPSERT_PROVIDER: Final = "SELECT chatd.admin_upsert_provider(%s, %s, %s, %s, %s, %s, %s, %s)"

LIST_PROVIDERS: Final = (
    "SELECT p.name, p.kind::text, p.base_url, p.api_key_env, p.enabled, p.auth_header, "
    "coalesce(p.api, CASE WHEN p.kind = 'anthropic' THEN 'messages' ELSE 'chat_completions' END), "
    "p.id FROM chatd.providers AS p ORDER BY p.name"
)

# the demo seeds its organization, user, provider and default model
DEMO_IDENTITY: Final = (
    "SELECT user_id, organization_id FROM chatd.admin_resolve_identity('demo', 'demo', TRUE)"
)

DEMO_UPSERT_PROVIDER: Final = "SELECT chatd.admin_upsert_provider(%s, %s, %s, %s)"

DEMO_UPSERT_MODEL: Final = (
    "SELECT chatd.admin_upsert_model(%s, %s, p_display_name => 'Demo model', "
    "p_input_price => 0.15, p_output_price => 0.60, p_is_default => TRUE)"
)

ROLE_EXISTS: Final = "SELECT 1 FROM pg_roles WHERE rolname = %s"

# a template for psycopg.sql.SQL(...).format(login=Identifier, role=Identifier)
CREATE_LOGIN_ROLE: Final = "CREATE ROLE {login} LOGIN IN ROLE {role}"

# `chatd check`: the health report (sql/60_health.sql)
HEALTH: Final = "SELECT h.live_workers, h.stuck_chats, h.oldest_stuck_since FROM chatd.health() AS h"

# `chatd spend`: the reporting views of sql/55_spend_views.sql (current period)
SPEND_PERIOD: Final = (
    "SELECT period::text, period_start, resets_at FROM chatd.spend_current_period"
)
SPEND_BY_ORGANIZATION: Final = (
    "SELECT organization_id, organization_name, spent_micros, users, priced_messages "
    "FROM chatd.spend_by_organization ORDER BY spent_micros DESC, organization_name"
)
SPEND_BY_USER: Final = (
    "SELECT user_id, username, spent_micros, limit_micros, limit_source, priced_messages, "
    "organizations FROM chatd.spend_by_user ORDER BY spent_micros DESC, username"
)
SPEND_BY_MODEL: Final = (
    "SELECT model_config_id, provider_name, model, spent_micros, messages, unpriced_messages, "
    "input_tokens, output_tokens FROM chatd.spend_by_model ORDER BY spent_micros DESC, model"
)

# ---------------------------------------------------------------------- chatd serve (chatd.http)

#: one page of messages after a message id (GET /api/chats/{id}/messages)
GET_MESSAGES_PAGE: Final = "SELECT chatd.get_chat_snapshot(%s, %s, %s, %s)"

#: one page of messages before a message id, newest first (GET .../messages?before=)
GET_MESSAGES_BEFORE: Final = "SELECT chatd.get_messages_before(%s, %s, %s, %s)"

APP_LIST_MODELS: Final = (
    "SELECT to_jsonb(m) FROM chatd.list_models(%s) AS m"
)

APP_USAGE: Final = (
    "SELECT limit_micros, source, spent_micros, period_start, resets_at "
    "FROM chatd.usage_limit_status(%s, %s)"
)

# ---------------------------------------------------------------------- MCP servers (chatd mcp, owner)

UPSERT_MCP_SERVER: Final = "SELECT chatd.admin_upsert_mcp_server(%s, %s, %s, %s, %s)"

LIST_MCP_SERVERS: Final = (
    "SELECT name, url, command, secret_env, enabled, models FROM chatd.admin_list_mcp_servers()"
)

REMOVE_MCP_SERVER: Final = "SELECT chatd.admin_remove_mcp_server(%s)"

# adds one server to a model's list (chatd mcp add --model)
ADD_MODEL_MCP_SERVER: Final = (
    "SELECT chatd.admin_set_model_mcp_servers(%s, array_append(coalesce(("
    "SELECT array_agg(DISTINCT x) FROM chatd.model_configs AS m, unnest(m.mcp_servers) AS x "
    "WHERE m.model = %s::text), '{}'), %s::text))"
)

# ---------------------------------------------------------------------- read replicas (chatd.client.reads)

#: the primary's WAL position now: the watermark a replica must have replayed
PRIMARY_WAL_LSN: Final = "SELECT pg_current_wal_lsn()::text"

#: on the read server: true when it has replayed the watermark, or is itself
#: a primary (not in recovery: then it is current)
REPLICA_HAS_REPLAYED: Final = (
    "SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, NOT pg_is_in_recovery())"
)
