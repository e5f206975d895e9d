"""Names the SQL contract defines: notification channels, payload kinds and
SQLSTATE codes (docs/notifications.md, docs/errors.md). The SQL side is the
source of truth (sql/12_helpers.sql for the channel names, sql/15_notify.sql
for the payloads, docs/errors.md for the codes); these constants are its one
Python mirror."""

from __future__ import annotations

from typing import Final

__all__ = [
    "CHAT_ARCHIVED",
    "CHAT_CHANNEL_PREFIX",
    "CHAT_NOT_FOUND",
    "FORBIDDEN",
    "INVALID_INPUT",
    "INVALID_TRANSITION",
    "LEASE_LOST",
    "PAYLOAD_KINDS",
    "QUEUE_FULL",
    "SQLSTATE_CLASS",
    "USAGE_LIMIT_EXCEEDED",
    "USER_PAYLOAD_KINDS",
    "USER_CHANNEL_PREFIX",
    "WAKE_CHANNEL",
    "chat_channel",
    "user_channel",
]

# ------------------------------------------------------------------ channels

#: Workers LISTEN here; a runnable chat (pending, due) sends an empty NOTIFY.
WAKE_CHANNEL: Final = "chatd_wake"
#: Per-chat channel: status/message/queue hints and streamed parts.
CHAT_CHANNEL_PREFIX: Final = "chatd_chat_"
#: Per-user channel: the user's chat list changed.
USER_CHANNEL_PREFIX: Final = "chatd_user_"


def chat_channel(chat_id: object) -> str:
    """The per-chat notification channel."""
    return f"{CHAT_CHANNEL_PREFIX}{chat_id}"


def user_channel(user_id: object) -> str:
    """The per-user notification channel."""
    return f"{USER_CHANNEL_PREFIX}{user_id}"


#: The ``kind`` of a per-chat notification payload (sql/15_notify.sql).
PAYLOAD_KINDS: Final = frozenset(
    {"status", "error", "retry", "archived", "title", "deleted", "message", "queue", "parts"}
)
#: The ``kind`` of a per-user notification payload.
USER_PAYLOAD_KINDS: Final = frozenset({"created", "status", "title", "archived", "deleted"})

# ------------------------------------------------------------------ SQLSTATE

#: Every error chatd's functions raise has an SQLSTATE of this class.
SQLSTATE_CLASS: Final = "CD"
CHAT_NOT_FOUND: Final = "CD001"
FORBIDDEN: Final = "CD002"
INVALID_TRANSITION: Final = "CD003"
LEASE_LOST: Final = "CD004"
QUEUE_FULL: Final = "CD005"
USAGE_LIMIT_EXCEEDED: Final = "CD006"
INVALID_INPUT: Final = "CD007"
CHAT_ARCHIVED: Final = "CD008"
TOOL_CALL_NOT_PENDING: Final = "CD009"
