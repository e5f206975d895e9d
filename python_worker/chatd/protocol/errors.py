"""The errors of the SQL contract, one class each.

* `ChatdError` and its subclasses: an error raised by a chatd SQL function
  (SQLSTATE class CD, docs/errors.md); `error_from_psycopg` maps one.
* `ChatError` / `ChatErrorKind`: a turn failure as stored in
  ``chats.last_error`` (DESIGN.md section 6): the worker writes it
  (`to_json`), clients read it (`from_json`).
"""

from __future__ import annotations

import contextlib
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from chatd.protocol import names

__all__ = [
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
    "datetime_or_none",
    "error_from_psycopg",
    "int_or_none",
    "uuid_or_none",
]


# --------------------------------------------------------------------------- SQLSTATE errors


class ChatdError(Exception):
    """An error raised by a chatd SQL function (SQLSTATE class CD)."""

    sqlstate: str | None = None

    def __init__(
        self, message: str, *, sqlstate: str | None = None, detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint


class ChatNotFound(ChatdError):
    sqlstate = names.CHAT_NOT_FOUND


class Forbidden(ChatdError):
    sqlstate = names.FORBIDDEN


class InvalidTransition(ChatdError):
    sqlstate = names.INVALID_TRANSITION


class LeaseLost(ChatdError):
    """SQL refused a write: the worker no longer owns the turn (CD004)."""

    sqlstate = names.LEASE_LOST


class QueueFull(ChatdError):
    sqlstate = names.QUEUE_FULL


class UsageLimitExceeded(ChatdError):
    """The user's spend in the current period reached the limit (CD006).

    ``spent_micros``, ``limit_micros`` and ``resets_at`` come from the JSON
    DETAIL of the error; they are None when the detail is not parseable.
    """

    sqlstate = names.USAGE_LIMIT_EXCEEDED

    def __init__(
        self, message: str, *, sqlstate: str | None = None, detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate, detail=detail, hint=hint)
        info: dict[str, Any] = {}
        with contextlib.suppress(ValueError, TypeError):
            loaded = json.loads(detail or "")
            if isinstance(loaded, dict):
                info = loaded
        self.spent_micros: int | None = int_or_none(info.get("spent_micros"))
        self.limit_micros: int | None = int_or_none(info.get("limit_micros"))
        self.resets_at: datetime | None = datetime_or_none(info.get("resets_at"))


class InvalidInput(ChatdError):
    sqlstate = names.INVALID_INPUT


class ChatArchived(ChatdError):
    sqlstate = names.CHAT_ARCHIVED


class ToolCallNotPending(ChatdError):
    """A tool result names a call that is not pending (unknown, already
    answered or cancelled, or answered by the other side): CD009."""

    sqlstate = names.TOOL_CALL_NOT_PENDING


_ERRORS: dict[str, type[ChatdError]] = {
    cls.sqlstate: cls
    for cls in (ChatNotFound, Forbidden, InvalidTransition, LeaseLost, QueueFull,
                UsageLimitExceeded, InvalidInput, ChatArchived, ToolCallNotPending)
    if cls.sqlstate is not None
}


def error_from_psycopg(exc: psycopg.Error) -> ChatdError | None:
    """The typed chatd error for a database error of SQLSTATE class CD, else None."""
    sqlstate = exc.sqlstate
    if not sqlstate or not sqlstate.startswith(names.SQLSTATE_CLASS):
        return None
    diag = exc.diag
    cls = _ERRORS.get(sqlstate, ChatdError)
    return cls(
        diag.message_primary or str(exc), sqlstate=sqlstate, detail=diag.message_detail,
        hint=diag.message_hint,
    )


# --------------------------------------------------------------------------- chats.last_error


class ChatErrorKind(enum.StrEnum):
    """Why a turn failed; stored as a string in `chats.last_error.kind`."""

    generic = "generic"
    overloaded = "overloaded"
    rate_limit = "rate_limit"
    timeout = "timeout"
    startup_timeout = "startup_timeout"
    auth = "auth"
    config = "config"
    usage_limit = "usage_limit"
    content_filter = "content_filter"
    missing_key = "missing_key"
    step_limit = "step_limit"
    #: the prompt did not fit the model's context window (docs/context.md):
    #: the worker compacts once and retries the step; a second one ends here
    context_length = "context_length"


@dataclass(frozen=True)
class ChatError:
    """A turn failure as stored in ``chats.last_error`` (DESIGN.md section 6).

    `message` is a short sentence for people; `detail` is the provider's own
    text (truncated); `retryable` tells `record_failure` whether to schedule a
    retry or go straight to `error`. `retry_after_ms` (the provider's retry
    hint) is passed to `record_failure` separately and is not stored.
    """

    message: str
    kind: str  # a ChatErrorKind when classified by the worker
    provider: str | None = None
    retryable: bool | None = None
    status_code: int | None = None
    detail: str | None = None
    retry_after_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The `chats.last_error` jsonb value (retry_after_ms is not part of it)."""
        return {
            "message": self.message,
            "kind": str(self.kind),
            "provider": self.provider,
            "retryable": self.retryable,
            "status_code": self.status_code,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, obj: Any) -> ChatError | None:
        if not isinstance(obj, Mapping):
            return None
        return cls(
            message=str(obj.get("message", "")),
            kind=str(obj.get("kind", "generic")),
            provider=obj.get("provider"),
            retryable=obj.get("retryable"),
            status_code=int_or_none(obj.get("status_code")),
            detail=obj.get("detail"),
        )


# --------------------------------------------------------------------------- lenient parsing


def int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def datetime_or_none(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def uuid_or_none(value: Any) -> UUID | None:
    if value is None or isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        return None
