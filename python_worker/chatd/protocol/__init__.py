"""The one Python home of the SQL contract: what sql/ defines and Python uses.

* `chatd.protocol.names`: notification channels, payload kinds, SQLSTATE codes;
* `chatd.protocol.errors`: one class per chatd SQLSTATE (`ChatdError`, ...,
  `LeaseLost`) and the stored turn failure (`ChatError`, `ChatErrorKind`);
* `chatd.protocol.queries`: every statement the worker, client, CLI and demo
  send, by name.

May import: the standard library and psycopg only. Every other chatd
package may import it; it imports no other chatd module.
"""

from chatd.protocol import queries
from chatd.protocol.errors import (
    ChatArchived,
    ChatdError,
    ChatError,
    ChatErrorKind,
    ChatNotFound,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    QueueFull,
    ToolCallNotPending,
    UsageLimitExceeded,
    error_from_psycopg,
)
from chatd.protocol.names import WAKE_CHANNEL, chat_channel, user_channel

__all__ = [
    "WAKE_CHANNEL",
    "ChatArchived",
    "ToolCallNotPending",
    "ChatError",
    "ChatErrorKind",
    "ChatNotFound",
    "ChatdError",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "LeaseLost",
    "QueueFull",
    "UsageLimitExceeded",
    "chat_channel",
    "error_from_psycopg",
    "queries",
    "user_channel",
]
