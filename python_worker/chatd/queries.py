"""Every SQL statement the worker sends, by name. Each is one call of a chatd
function: the decisions live in SQL, and one statement is one round trip."""

from __future__ import annotations

from typing import Final

WORKER_SETTINGS: Final = (
    "SELECT heartbeat_interval_ms, startup_timeout_ms, stale_after_ms FROM chatd.worker_settings()"
)

# One round trip gives a claimed turn what it needs: lease, model and
# provider, and the first page of the prompt (history_complete false: read
# the rest with TURN_HISTORY).
ACQUIRE_CHATS: Final = (
    "SELECT chat_id, lease, attempt, model, messages, history_complete "
    "FROM chatd.acquire_chats(%(worker_id)s, %(limit)s)"
)

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
    "%(provider_response_id)s, %(runtime_ms)s)"
)

# A batch of finished turns, each with its last streamed parts, in one
# statement; lost leases come back with message_id NULL.
FINISH_TURNS: Final = "SELECT chat_id, message_id FROM chatd.finish_turns(%(turns)s)"

SAVE_INTERRUPTED_TURN: Final = (
    "SELECT chatd.save_interrupted_turn(%(chat_id)s, %(lease)s, %(content)s, %(usage)s, "
    "%(provider_response_id)s, %(runtime_ms)s)"
)

RECORD_FAILURE: Final = (
    "SELECT status, attempt, next_attempt_at "
    "FROM chatd.record_failure(%(chat_id)s, %(lease)s, %(error)s, %(retry_after_ms)s)"
)

RELEASE_CHATS: Final = "SELECT chatd.release_chats(%(worker_id)s, %(chat_ids)s)"

RECOVER_STALE_CHATS: Final = "SELECT chatd.recover_stale_chats()"

JANITOR: Final = "SELECT chatd.janitor()"

# Preflight: is the schema there (migrations applied)?
SCHEMA_PRESENT: Final = "SELECT to_regprocedure('chatd.acquire_chats(text, integer)') IS NOT NULL"

WAKE_CHANNEL: Final = "chatd_wake"


def chat_channel(chat_id: object) -> str:
    """The per-chat notification channel."""
    return f"chatd_chat_{chat_id}"
