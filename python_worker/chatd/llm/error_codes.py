"""The tables `classify` decides by: provider error codes and types, and
text fallbacks, each mapped to a ChatErrorKind and whether it is retried."""

from __future__ import annotations

import re

from chatd.protocol.errors import ChatErrorKind

__all__ = [
    "USAGE_CODES",
    "CONTENT_FILTER_CODES",
    "CONTEXT_CODES",
    "CONTEXT_TEXT",
    "CONFIG_CODES",
    "AUTH_CODES",
    "OVERLOADED_CODES",
    "RATE_LIMIT_CODES",
    "WEAK_CODES",
    "TEXT_RULES",
]

USAGE_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_error",
        "billing_hard_limit_reached",
        "contract_spend_limit_reached",
        "enforced_spend_limit_reached",
        "linked_organization_spend_limit_reached",
        "linked_organization_billing_unavailable",
    }
)
CONTENT_FILTER_CODES = frozenset(
    {"content_filter", "content_policy_violation", "responsibleaipolicyviolation"}
)
# The prompt did not fit the model's window: OpenAI's code, and the words of
# every provider's 400 (Anthropic: "prompt is too long: N tokens > M
# maximum", or "input length and `max_tokens` exceed context limit: N + M >
# L" when the prompt fits but not with max_tokens beside it; OpenAI
# Responses: "Your input exceeds the context window of this model";
# OpenAI-compatible servers: "maximum context length", vLLM's
# "This model's maximum context length is ...", llama.cpp's "exceeds the
# available context size"). A 413 is the request's size in bytes, not
# tokens: config, unless its text speaks of the context.
CONTEXT_CODES = frozenset({"context_length_exceeded"})
CONTEXT_TEXT = re.compile(
    r"context.length|context window|context size|prompt is too long|maximum context|too many tokens"
    r"|reduce the length of the messages|input is too long|exceed context limit"
)
CONFIG_CODES = frozenset(
    {
        "string_above_max_length",
        "model_not_found",
        "unsupported_model",
        "request_too_large",
        "not_found_error",
    }
)
AUTH_CODES = frozenset(
    {"authentication_error", "permission_error", "invalid_api_key", "invalid_organization"}
)
OVERLOADED_CODES = frozenset({"overloaded_error", "overloaded", "engine_overloaded"})
RATE_LIMIT_CODES = frozenset(
    {"rate_limit_error", "rate_limit_exceeded", "ramp_limit_exceeded", "requests", "tokens"}
)
# Weak codes decide only when the HTTP status did not (OpenAI labels a 401 or
# a 404 `invalid_request_error` too).
WEAK_CODES: dict[str, tuple[ChatErrorKind, bool]] = {
    "invalid_request_error": (ChatErrorKind.config, False),
    "timeout_error": (ChatErrorKind.timeout, True),
    "api_error": (ChatErrorKind.generic, True),
    "server_error": (ChatErrorKind.generic, True),
}

# Text fallbacks, checked in order against the lower-cased exception text.
TEXT_RULES: list[tuple[re.Pattern[str], ChatErrorKind, bool]] = [
    (
        re.compile(r"insufficient.quota|exceeded your current quota|billing|credit balance"),
        ChatErrorKind.usage_limit,
        False,
    ),
    (
        re.compile(r"content.filter|content.management.policy|content.policy|safety system"),
        ChatErrorKind.content_filter,
        False,
    ),
    (re.compile(r"overloaded|\b529\b"), ChatErrorKind.overloaded, True),
    (re.compile(r"rate.limit|too many requests|\b429\b"), ChatErrorKind.rate_limit, True),
    (
        re.compile(r"model.not.found|does not exist|unknown model"),
        ChatErrorKind.config,
        False,
    ),
    (
        re.compile(
            r"unauthori[sz]ed|invalid.{0,3}api.key|invalid x-api-key|authenticat|forbidden"
            r"|permission denied|\b401\b|\b403\b"
        ),
        ChatErrorKind.auth,
        False,
    ),
    (re.compile(r"service unavailable|\b503\b"), ChatErrorKind.overloaded, True),
    (re.compile(r"timed out|timeout|deadline exceeded|\b408\b"), ChatErrorKind.timeout, True),
    (
        re.compile(
            r"connection (error|reset|refused|aborted|closed)|broken pipe|unexpected eof"
            r"|stream closed|server disconnected|incomplete chunked"
        ),
        ChatErrorKind.timeout,
        True,
    ),
    (
        re.compile(r"internal server error|bad gateway|gateway timeout|\b50[024]\b"),
        ChatErrorKind.generic,
        True,
    ),
]
