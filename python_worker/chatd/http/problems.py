"""RFC 9457 problem details, and the one table from chatd's SQLSTATEs to
HTTP statuses (docs/http.md, docs/errors.md)."""

from __future__ import annotations

from typing import Any, Final

from starlette.responses import JSONResponse

from chatd.protocol import names
from chatd.protocol.errors import ChatdError, UsageLimitExceeded

__all__ = ["SQLSTATE_STATUS", "Problem", "from_chatd_error", "problem_response"]

PROBLEM_TYPE: Final = "https://chatd.dev/problems/"

#: SQLSTATE -> (HTTP status, problem type slug, title). Not found and not
#: yours (CD002) are one answer: 404, so ids of others' chats leak nothing.
SQLSTATE_STATUS: Final[dict[str, tuple[int, str, str]]] = {
    names.CHAT_NOT_FOUND: (404, "not-found", "Not found"),
    names.FORBIDDEN: (404, "not-found", "Not found"),
    names.INVALID_TRANSITION: (409, "invalid-transition", "Invalid transition"),
    names.LEASE_LOST: (409, "invalid-transition", "Invalid transition"),
    names.QUEUE_FULL: (429, "queue-full", "Queue full"),
    names.USAGE_LIMIT_EXCEEDED: (409, "usage-limit", "Usage limit exceeded"),
    names.INVALID_INPUT: (422, "invalid-input", "Invalid input"),
    names.CHAT_ARCHIVED: (409, "chat-archived", "Chat archived"),
    names.TOOL_CALL_NOT_PENDING: (409, "tool-call-not-pending", "Tool call not pending"),
}


class Problem(Exception):
    """An error answered as ``application/problem+json``."""

    def __init__(self, status: int, slug: str, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.extra = extra

    def body(self, instance: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": PROBLEM_TYPE + self.slug, "title": self.title, "status": self.status,
        }
        if self.detail:
            out["detail"] = self.detail
        if instance:
            out["instance"] = instance
        out.update(self.extra)
        return out


def from_chatd_error(exc: ChatdError) -> Problem:
    status, slug, title = SQLSTATE_STATUS.get(exc.sqlstate or "", (500, "internal", "Internal error"))
    extra: dict[str, Any] = {"sqlstate": exc.sqlstate}
    detail = exc.message if status != 404 else "no such chat, or not yours"
    if isinstance(exc, UsageLimitExceeded):
        extra.update(
            kind="usage_limit", spent_micros=exc.spent_micros, limit_micros=exc.limit_micros,
            resets_at=exc.resets_at.isoformat() if exc.resets_at else None,
        )
    return Problem(status, slug, title, detail, **extra)


def problem_response(problem: Problem, instance: str = "") -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if problem.status == 401 else None
    return JSONResponse(
        problem.body(instance), status_code=problem.status, media_type="application/problem+json",
        headers=headers,
    )
