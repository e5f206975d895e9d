"""The client's errors: chatd's SQLSTATE errors, one class each. They are
defined once, in chatd.protocol.errors (the worker raises the same
`LeaseLost`), and re-exported here."""

from chatd.protocol.errors import (
    ChatArchived,
    ChatdError,
    ChatError,
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

__all__ = [
    "ChatArchived",
    "ToolCallNotPending",
    "ChatError",
    "ChatNotFound",
    "ChatdError",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "LeaseLost",
    "QueueFull",
    "UsageLimitExceeded",
    "error_from_psycopg",
]
