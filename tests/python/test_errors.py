"""Classification of provider failures into ChatErrors (chatd.llm.classify)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import openai
import psycopg
import pytest
from psycopg.types.json import Jsonb

from chatd.llm import ModelSpec, resolve_api_key
from chatd.llm.classify import (
    MAX_DETAIL_CHARS,
    MAX_RETRY_AFTER_MS,
    ChatError,
    ChatErrorKind,
    ChatTurnError,
    classify,
    make_error,
    parse_retry_after,
)

K = ChatErrorKind
REQUEST = httpx2.Request("POST", "https://llm.example.test/v1/endpoint")


def response(status: int, headers: dict[str, str] | None = None) -> httpx2.Response:
    return httpx2.Response(status, headers=headers or {}, request=REQUEST)


def openai_error(
    cls: type[openai.APIStatusError],
    status: int,
    error: dict[str, object] | None,
    headers: dict[str, str] | None = None,
) -> openai.APIStatusError:
    """As the OpenAI SDK builds it: the body handed over is the inner `error` object."""
    body = {"error": error} if error is not None else None
    return cls(f"Error code: {status} - {body}", response=response(status, headers), body=error)


def anthropic_error(
    cls: type[anthropic.APIStatusError],
    status: int,
    error: dict[str, object],
    headers: dict[str, str] | None = None,
) -> anthropic.APIStatusError:
    """As the Anthropic SDK builds it: the body is the whole `{"type": "error", ...}` object."""
    body = {"type": "error", "error": error}
    return cls(f"Error code: {status} - {body}", response=response(status, headers), body=body)


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], BaseException]
    kind: ChatErrorKind
    retryable: bool
    status: int | None = None
    retry_after_ms: int | None = None


CASES = [
    # --- OpenAI SDK
    Case(
        "openai-429-rate-limit-retry-after-ms",
        lambda: openai_error(
            openai.RateLimitError,
            429,
            {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"},
            {"retry-after-ms": "1500", "retry-after": "9"},
        ),
        K.rate_limit,
        True,
        429,
        1500,
    ),
    Case(
        "openai-429-insufficient-quota",
        lambda: openai_error(
            openai.RateLimitError,
            429,
            {
                "message": "You exceeded your current quota",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            },
        ),
        K.usage_limit,
        False,
        429,
    ),
    Case(
        "openai-400-context-length",
        lambda: openai_error(
            openai.BadRequestError,
            400,
            {
                "message": "maximum context length is 8192 tokens",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            },
        ),
        K.context_length,
        False,
        400,
    ),
    Case(
        "openai-400-invalid-request",
        lambda: openai_error(
            openai.BadRequestError,
            400,
            {"message": "bad", "type": "invalid_request_error", "code": None},
        ),
        K.config,
        False,
        400,
    ),
    Case(
        "openai-404-model-not-found",
        lambda: openai_error(
            openai.NotFoundError,
            404,
            {
                "message": "The model `gpt-9` does not exist",
                "type": "invalid_request_error",
                "code": "model_not_found",
            },
        ),
        K.config,
        False,
        404,
    ),
    Case(
        "openai-400-content-filter",
        lambda: openai_error(
            openai.BadRequestError,
            400,
            {"message": "filtered", "type": None, "code": "content_filter"},
        ),
        K.content_filter,
        False,
        400,
    ),
    Case(
        "openai-401-invalid-api-key",
        lambda: openai_error(
            openai.AuthenticationError,
            401,
            {
                "message": "Incorrect API key",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            },
        ),
        K.auth,
        False,
        401,
    ),
    Case(
        "openai-403",
        lambda: openai_error(openai.PermissionDeniedError, 403, None),
        K.auth,
        False,
        403,
    ),
    Case(
        "openai-408", lambda: openai_error(openai.APIStatusError, 408, None), K.timeout, True, 408
    ),
    Case(
        "openai-409-unknown-4xx",
        lambda: openai_error(openai.ConflictError, 409, None),
        K.generic,
        False,
        409,
    ),
    Case(
        "openai-500",
        lambda: openai_error(
            openai.InternalServerError, 500, {"message": "oops", "type": "server_error"}
        ),
        K.generic,
        True,
        500,
    ),
    Case(
        "openai-502",
        lambda: openai_error(openai.InternalServerError, 502, None),
        K.generic,
        True,
        502,
    ),
    Case(
        "openai-503",
        lambda: openai_error(openai.InternalServerError, 503, None),
        K.overloaded,
        True,
        503,
    ),
    Case(
        "openai-504",
        lambda: openai_error(openai.InternalServerError, 504, None),
        K.generic,
        True,
        504,
    ),
    Case(
        "openai-in-stream-error",
        lambda: openai.APIError(
            "boom", REQUEST, body={"message": "The server had an error", "type": "server_error"}
        ),
        K.generic,
        True,
    ),
    Case(
        "openai-connection-error",
        lambda: openai.APIConnectionError(request=REQUEST),
        K.timeout,
        True,
    ),
    Case("openai-timeout-error", lambda: openai.APITimeoutError(request=REQUEST), K.timeout, True),
    # --- Anthropic SDK
    Case(
        "anthropic-529-overloaded",
        lambda: anthropic_error(
            anthropic.OverloadedError, 529, {"type": "overloaded_error", "message": "Overloaded"}
        ),
        K.overloaded,
        True,
        529,
    ),
    Case(
        "anthropic-429-retry-after-fractional",
        lambda: anthropic_error(
            anthropic.RateLimitError,
            429,
            {"type": "rate_limit_error", "message": "slow down"},
            {"retry-after": "2.5"},
        ),
        K.rate_limit,
        True,
        429,
        2500,
    ),
    Case(
        "anthropic-429-spend-limit",
        lambda: anthropic_error(
            anthropic.RateLimitError,
            429,
            {
                "type": "rate_limit_error",
                "message": "spend limit",
                "details": {"error_code": "enforced_spend_limit_reached"},
            },
        ),
        K.usage_limit,
        False,
        429,
    ),
    Case(
        "anthropic-402-billing",
        lambda: anthropic_error(
            anthropic.PaymentRequiredError, 402, {"type": "billing_error", "message": "pay"}
        ),
        K.usage_limit,
        False,
        402,
    ),
    Case(
        "anthropic-400-prompt-too-long",
        lambda: anthropic_error(
            anthropic.BadRequestError,
            400,
            {"type": "invalid_request_error", "message": "prompt is too long: 210000 tokens > 200000 maximum"},
        ),
        K.context_length,
        False,
        400,
    ),
    Case(
        "anthropic-400-input-and-max-tokens-over-the-limit",
        lambda: anthropic_error(
            anthropic.BadRequestError,
            400,
            {"type": "invalid_request_error", "message": "input length and `max_tokens` exceed context limit: "
             "189136 + 20000 > 204648, decrease input length or `max_tokens` and try again"},
        ),
        K.context_length,
        False,
        400,
    ),
    Case(
        "anthropic-404-model",
        lambda: anthropic_error(
            anthropic.NotFoundError, 404, {"type": "not_found_error", "message": "model: nope"}
        ),
        K.config,
        False,
        404,
    ),
    Case(
        "anthropic-401",
        lambda: anthropic_error(
            anthropic.AuthenticationError,
            401,
            {"type": "authentication_error", "message": "invalid x-api-key"},
        ),
        K.auth,
        False,
        401,
    ),
    Case(
        "anthropic-403",
        lambda: anthropic_error(
            anthropic.PermissionDeniedError, 403, {"type": "permission_error", "message": "no"}
        ),
        K.auth,
        False,
        403,
    ),
    Case(
        "anthropic-408",
        lambda: anthropic_error(
            anthropic.RequestTimeoutError, 408, {"type": "timeout_error", "message": "slow"}
        ),
        K.timeout,
        True,
        408,
    ),
    Case(
        "anthropic-500",
        lambda: anthropic_error(
            anthropic.InternalServerError, 500, {"type": "api_error", "message": "oops"}
        ),
        K.generic,
        True,
        500,
    ),
    Case(
        "anthropic-503",
        lambda: anthropic_error(
            anthropic.ServiceUnavailableError, 503, {"type": "api_error", "message": "down"}
        ),
        K.overloaded,
        True,
        503,
    ),
    Case(
        "anthropic-504",
        lambda: anthropic_error(
            anthropic.GatewayTimeoutError, 504, {"type": "timeout_error", "message": "late"}
        ),
        K.generic,
        True,
        504,
    ),
    Case(
        "anthropic-in-stream-overloaded",
        lambda: anthropic_error(
            anthropic.APIStatusError, 200, {"type": "overloaded_error", "message": "Overloaded"}
        ),
        K.overloaded,
        True,
        None,
    ),
    Case(
        "anthropic-connection-error",
        lambda: anthropic.APIConnectionError(request=REQUEST),
        K.timeout,
        True,
    ),
    Case(
        "anthropic-timeout-error",
        lambda: anthropic.APITimeoutError(request=REQUEST),
        K.timeout,
        True,
    ),
    # --- no structure: classes, then text heuristics
    Case(
        "raw-transport-error",
        lambda: httpx2.RemoteProtocolError(
            "peer closed connection without sending complete message body"
        ),
        K.timeout,
        True,
    ),
    Case("builtin-timeout", lambda: TimeoutError(), K.timeout, True),
    Case("connection-reset", lambda: ConnectionResetError(104, "reset"), K.timeout, True),
    Case(
        "text-overloaded",
        lambda: RuntimeError("upstream overloaded, try later"),
        K.overloaded,
        True,
    ),
    Case("text-503", lambda: RuntimeError("gateway said: Error code: 503"), K.overloaded, True),
    Case("text-rate-limit", lambda: RuntimeError("Too Many Requests"), K.rate_limit, True),
    Case(
        "text-quota", lambda: RuntimeError("You exceeded your current quota"), K.usage_limit, False
    ),
    Case("text-context", lambda: RuntimeError("maximum context length exceeded"), K.context_length, False),
    Case(
        "text-content-filter",
        lambda: RuntimeError("response flagged by the content filter"),
        K.content_filter,
        False,
    ),
    Case("text-auth", lambda: RuntimeError("Invalid API key provided"), K.auth, False),
    Case("text-timeout", lambda: RuntimeError("the request timed out"), K.timeout, True),
    Case("text-bad-gateway", lambda: RuntimeError("502 Bad Gateway"), K.generic, True),
    Case("unknown", lambda: ValueError("something odd"), K.generic, False),
    # --- already classified errors pass through
    Case(
        "chat-turn-error-passthrough",
        lambda: ChatTurnError(make_error(K.startup_timeout, "p", retryable=True)),
        K.startup_timeout,
        True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_classify(case: Case) -> None:
    error = classify(case.make(), "prov")
    assert (error.kind, error.retryable, error.status_code, error.retry_after_ms) == (
        case.kind,
        case.retryable,
        case.status,
        case.retry_after_ms,
    )
    assert error.provider == "prov" or case.id == "chat-turn-error-passthrough"
    assert error.message


def test_every_kind_is_covered() -> None:
    # missing_key: see below; step_limit is SQL's (commit_tool_step), never a
    # provider failure: tests/sql/tools_loop.sql and tests/python/test_tools.py
    covered = {c.kind for c in CASES} | {K.missing_key, K.step_limit}
    assert covered == set(ChatErrorKind)


def test_structured_type_wins_over_misleading_text() -> None:
    exc = anthropic_error(
        anthropic.OverloadedError, 529, {"type": "overloaded_error", "message": "invalid api key"}
    )
    assert classify(exc, "p").kind is K.overloaded


def test_detail_is_the_provider_message() -> None:
    exc = anthropic_error(
        anthropic.BadRequestError,
        400,
        {"type": "invalid_request_error", "message": "prompt is too long"},
    )
    assert classify(exc, "anthropic").detail == "prompt is too long"


def test_missing_key_names_the_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATD_NO_SUCH_KEY", raising=False)
    spec = ModelSpec("openai", "openai", None, "CHATD_NO_SUCH_KEY", "gpt", 10)
    with pytest.raises(ChatTurnError) as info:
        resolve_api_key(spec)
    assert info.value.error.kind is K.missing_key
    assert not info.value.error.retryable
    assert "CHATD_NO_SUCH_KEY" in info.value.error.message


def test_to_json_is_the_last_error_shape() -> None:
    error = ChatError("m", K.rate_limit, "openai", True, 429, "d", retry_after_ms=5)
    as_json = error.to_json()
    assert as_json == {
        "message": "m",
        "kind": "rate_limit",
        "provider": "openai",
        "retryable": True,
        "status_code": 429,
        "detail": "d",
    }
    assert json.loads(json.dumps(as_json)) == as_json


def test_chat_turn_error_carries_the_error() -> None:
    error = make_error(K.auth, "anthropic", retryable=False)
    exc = ChatTurnError(error)
    assert exc.error is error and str(exc) == error.message


NOW = datetime(2025, 1, 1, 0, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1500),
        ({"Retry-After-Ms": "12.2"}, 13),
        ({"retry-after": "2"}, 2000),
        ({"retry-after": "0.25"}, 250),
        ({"Retry-After": "1.0001"}, 1001),
        ({"retry-after-ms": "100", "retry-after": "7"}, 100),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3000),
        ({"retry-after": "Wed, 01 Jan 2025 00:00:30 GMT"}, 30000),
        ({"retry-after": "Tue, 31 Dec 2024 23:59:00 GMT"}, 0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "1e12"}, MAX_RETRY_AFTER_MS),
        ({"x-other": "1"}, None),
        ({}, None),
        (None, None),
    ],
    ids=lambda v: repr(v),
)
def test_parse_retry_after(headers: dict[str, str] | None, expected: int | None) -> None:
    assert parse_retry_after(headers, now=NOW) == expected


def test_parse_retry_after_accepts_sdk_headers() -> None:
    headers = httpx2.Headers({"Retry-After": "4"})
    assert parse_retry_after(headers) == 4000


@pytest.mark.parametrize("kind", list(ChatErrorKind))
def test_every_chat_error_the_worker_builds_is_a_valid_chat_error_for_chatd(
    conn: psycopg.Connection[Any], kind: ChatErrorKind
) -> None:
    # chatd._chat_error is what record_failure validates with (CD007 otherwise)
    for error in (
        ChatError("m", kind, None, False),
        ChatError("m", kind, "openai", True, status_code=429, detail="d" * MAX_DETAIL_CHARS, retry_after_ms=5),
    ):
        row = conn.execute("SELECT chatd._chat_error(%s)", (Jsonb(error.to_json()),)).fetchone()
        assert row is not None and row[0] == error.to_json()
