"""Provider failures, classified into chatd's ChatError taxonomy (DESIGN.md section 6).

The retry policy's provider side: which failures are retryable, and the
provider's retry hint. (`ChatError` itself is part of the SQL contract and
lives in chatd.protocol.errors; it is re-exported here.)

Every exception raised while calling an LLM is turned into a `ChatError` by
`classify`. Structured signals win: the HTTP status, the provider's error type
or code in the response body, and the `retry-after-ms` / `retry-after` headers.
Text heuristics on the exception message are only a fallback for errors that
carry no structure (gateways, proxies, unusual SDK paths).

`ChatError.to_json()` is what the worker stores in `chats.last_error`;
`retry_after_ms` is passed to `record_failure` separately, where it floors the
backoff delay.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import anthropic
import openai

from chatd.llm.error_codes import (
    AUTH_CODES,
    CONFIG_CODES,
    CONTENT_FILTER_CODES,
    CONTEXT_CODES,
    CONTEXT_TEXT,
    OVERLOADED_CODES,
    RATE_LIMIT_CODES,
    TEXT_RULES,
    USAGE_CODES,
    WEAK_CODES,
)
from chatd.protocol.errors import ChatError, ChatErrorKind

__all__ = [
    "ChatError",
    "ChatErrorKind",
    "ChatTurnError",
    "classify",
    "classify_stream_event",
    "make_error",
    "parse_retry_after",
]

#: Upper bound for a provider's retry hint (24 hours), so a bogus header cannot
#: park a chat for years or overflow anything downstream.
MAX_RETRY_AFTER_MS = 24 * 3600 * 1000

#: Longest provider text kept in `ChatError.detail`.
MAX_DETAIL_CHARS = 2000


class ChatTurnError(Exception):
    """Raised by the provider adapters; `.error` is the classified failure."""

    def __init__(self, error: ChatError) -> None:
        super().__init__(error.message)
        self.error = error


# --------------------------------------------------------------------------- retry-after


def parse_retry_after(headers: Mapping[str, str] | None, now: datetime | None = None) -> int | None:
    """The provider's minimum retry delay in milliseconds, or None.

    `retry-after-ms` (milliseconds, OpenAI) wins over `retry-after` (seconds,
    possibly fractional, or an HTTP date). Header names are matched
    case-insensitively; garbage, negative and non-finite values are ignored; a
    date in the past gives 0; results are capped at `MAX_RETRY_AFTER_MS`.
    """
    if not headers:
        return None
    lowered = {str(k).lower(): str(v).strip() for k, v in headers.items()}
    ms = _parse_number(lowered.get("retry-after-ms"), scale=1.0)
    if ms is not None:
        return ms
    value = lowered.get("retry-after")
    if not value:
        return None
    seconds = _parse_number(value, scale=1000.0)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    delta_ms = (when - current).total_seconds() * 1000.0
    return min(MAX_RETRY_AFTER_MS, max(0, math.ceil(delta_ms)))


def _parse_number(value: str | None, *, scale: float) -> int | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return min(MAX_RETRY_AFTER_MS, math.ceil(number * scale))


# --------------------------------------------------------------------------- classify

_MESSAGES: dict[ChatErrorKind, str] = {
    ChatErrorKind.generic: "{p} request failed",
    ChatErrorKind.overloaded: "{p} is overloaded",
    ChatErrorKind.rate_limit: "{p} rate limit exceeded",
    ChatErrorKind.timeout: "{p} request timed out",
    ChatErrorKind.startup_timeout: "{p} did not start responding in time",
    ChatErrorKind.auth: "{p} rejected the credentials",
    ChatErrorKind.config: "{p} rejected the request (check the model and the context length)",
    ChatErrorKind.usage_limit: "{p} quota or billing limit reached",
    ChatErrorKind.content_filter: "{p} blocked the content (content filter)",
    ChatErrorKind.missing_key: "{p} has no API key",
    ChatErrorKind.step_limit: "the turn reached its limit of tool steps",
    ChatErrorKind.context_length: "{p}: the conversation is longer than the model's context window",
}

def classify(exc: BaseException, provider: str) -> ChatError:
    """Turn any exception from a provider call into a ChatError.

    Order: an already classified `ChatTurnError`; the provider's error code or
    type; the HTTP status; weak error types; SDK connection/timeout classes and
    transport errors; then text heuristics; else a non-retryable `generic`.
    """
    if isinstance(exc, ChatTurnError):
        return exc.error
    status = _status_code(exc)
    codes, provider_message = _error_codes(exc)
    headers = _headers(exc)
    retry_after = parse_retry_after(headers) if headers is not None else None
    detail = _truncate(provider_message or str(exc) or type(exc).__name__)

    decided = (
        _by_context(codes, status, f"{exc} {provider_message or ''}".lower())
        or _by_code(codes)
        or _by_status(status)
        or _by_weak_code(codes)
        or _by_class(exc)
        or _by_text(f"{exc} {provider_message or ''}".lower())
    )
    kind, retryable = decided or (ChatErrorKind.generic, False)
    message = None
    if isinstance(exc, json.JSONDecodeError):
        message = f"{provider}: malformed stream chunk (not JSON): {exc.msg}"
    return make_error(
        kind,
        provider,
        retryable=retryable,
        message=message,
        status_code=status,
        detail=detail,
        retry_after_ms=retry_after,
    )


def classify_stream_event(
    provider: str, code: str | None, message: str | None, error_type: str | None = None
) -> ChatError:
    """A ChatError for an error reported inside a 200 stream without an
    exception (Responses `response.failed`, `error`): as `classify`, by code,
    weak code, then text; else a non-retryable `generic`."""
    codes = {c.lower() for c in (code, error_type) if isinstance(c, str) and c}
    named = ", ".join(sorted(codes))
    text = message if isinstance(message, str) else ""
    decided = (
        _by_context(codes, None, f"{named} {text}".lower())
        or _by_code(codes) or _by_weak_code(codes) or _by_text(f"{named} {text}".lower())
    )
    kind, retryable = decided or (ChatErrorKind.generic, False)
    base = _MESSAGES[kind].format(p=provider)
    return make_error(
        kind, provider, retryable=retryable, message=f"{base}: {named}" if named else base,
        detail=_truncate(text or named or "error event without details"),
    )


def make_error(
    kind: ChatErrorKind,
    provider: str | None,
    *,
    retryable: bool,
    message: str | None = None,
    status_code: int | None = None,
    detail: str | None = None,
    retry_after_ms: int | None = None,
) -> ChatError:
    """A ChatError with the standard message for `kind` unless one is given."""
    if message is None:
        message = _MESSAGES[kind].format(p=provider or "the provider")
        if status_code is not None and status_code >= 400:
            message += f" (HTTP {status_code})"
    return ChatError(
        message=message,
        kind=kind,
        provider=provider,
        retryable=retryable,
        status_code=status_code,
        detail=detail,
        retry_after_ms=retry_after_ms,
    )


def _status_code(exc: BaseException) -> int | None:
    """The HTTP error status; None for in-stream errors (which arrive with a 200)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and status >= 400:
        return status
    return None


def _headers(exc: BaseException) -> Mapping[str, str] | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return headers if isinstance(headers, Mapping) else None


def _error_codes(exc: BaseException) -> tuple[set[str], str | None]:
    """Lower-cased error types/codes from the exception and its body, plus the body's message."""
    codes: set[str] = set()
    message: str | None = None
    for attr in ("type", "code", "error_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and value:
            codes.add(value.lower())
    body = getattr(exc, "body", None)
    # OpenAI hands over the inner `error` object; Anthropic the whole body.
    for obj in (body, body.get("error") if isinstance(body, dict) else None):
        if not isinstance(obj, dict):
            continue
        for key in ("type", "code"):
            value = obj.get(key)
            if isinstance(value, str) and value and value != "error":
                codes.add(value.lower())
        details = obj.get("details")
        if isinstance(details, dict) and isinstance(details.get("error_code"), str):
            codes.add(details["error_code"].lower())
        if isinstance(obj.get("message"), str):
            message = obj["message"]
    return codes, message


def _by_context(codes: set[str], status: int | None, text: str) -> tuple[ChatErrorKind, bool] | None:
    """context_length: by its code, or a client error (or no status: an
    error event in a stream) whose text says the prompt was too long."""
    if codes & CONTEXT_CODES or (
        (status is None or 400 <= status < 500) and status not in (401, 403, 429) and CONTEXT_TEXT.search(text)
    ):
        return ChatErrorKind.context_length, False
    return None


def _by_code(codes: set[str]) -> tuple[ChatErrorKind, bool] | None:
    if codes & USAGE_CODES:
        return ChatErrorKind.usage_limit, False
    if codes & CONTENT_FILTER_CODES:
        return ChatErrorKind.content_filter, False
    if codes & CONFIG_CODES:
        return ChatErrorKind.config, False
    if codes & AUTH_CODES:
        return ChatErrorKind.auth, False
    if codes & OVERLOADED_CODES:
        return ChatErrorKind.overloaded, True
    if codes & RATE_LIMIT_CODES:
        return ChatErrorKind.rate_limit, True
    return None


def _by_status(status: int | None) -> tuple[ChatErrorKind, bool] | None:
    if status is None or status < 400:
        return None
    if status == 429:
        return ChatErrorKind.rate_limit, True
    if status in (503, 529):
        return ChatErrorKind.overloaded, True
    if status == 408:
        return ChatErrorKind.timeout, True
    if status in (401, 403):
        return ChatErrorKind.auth, False
    if status == 402:
        return ChatErrorKind.usage_limit, False
    if status in (400, 404, 413, 422):
        return ChatErrorKind.config, False
    if status >= 500:
        return ChatErrorKind.generic, True
    return ChatErrorKind.generic, False


def _by_weak_code(codes: set[str]) -> tuple[ChatErrorKind, bool] | None:
    for code in sorted(codes):
        if code in WEAK_CODES:
            return WEAK_CODES[code]
    return None


def _by_class(exc: BaseException) -> tuple[ChatErrorKind, bool] | None:
    if isinstance(exc, json.JSONDecodeError):
        return ChatErrorKind.timeout, True  # a malformed chunk: the transport garbled it
    if isinstance(exc, (openai.APIConnectionError, anthropic.APIConnectionError)):
        return ChatErrorKind.timeout, True  # APITimeoutError is a subclass
    if isinstance(exc, (TimeoutError, ConnectionError)) or _is_transport_error(exc):
        return ChatErrorKind.timeout, True
    return None


def _is_transport_error(exc: BaseException) -> bool:
    """An httpx/httpx2 transport error that escaped the SDK (without importing httpx2)."""
    return any(
        cls.__name__ == "TransportError" and cls.__module__.startswith("httpx")
        for cls in type(exc).__mro__
    )


def _by_text(text: str) -> tuple[ChatErrorKind, bool] | None:
    for pattern, kind, retryable in TEXT_RULES:
        if pattern.search(text):
            return kind, retryable
    return None


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"
