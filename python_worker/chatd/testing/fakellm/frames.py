"""What both wire formats share: provider-shaped error bodies, token totals
and server-sent-event framing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
_MESSAGES = {
    "context_length_exceeded": "This model's maximum context length is 8192 tokens; "
    "prompt is too long",
    "insufficient_quota": "You exceeded your current quota, please check your plan and billing",
    "overloaded_error": "Overloaded",
    "rate_limit_error": "Rate limit exceeded",
    "rate_limit_exceeded": "Rate limit exceeded",
}


def error_object(api: str, status: int, error_type: str | None, message: str | None) -> Any:
    """The provider-shaped error body (the in-stream error event's data too)."""
    if api == "anthropic":
        kind = error_type if error_type and error_type.endswith("_error") else None
        kind = kind or _ANTHROPIC_TYPES.get(status) or "api_error"
        error: dict[str, Any] = {"type": kind}
        if error_type and error_type != kind:
            error["details"] = {"error_code": error_type}
        error["message"] = message or _MESSAGES.get(error_type or kind) or f"fake error {status}"
        return {"type": "error", "error": error}
    default_type = "invalid_request_error" if status < 500 else "server_error"
    if error_type == "insufficient_quota":
        default_type = "insufficient_quota"
    return {
        "error": {
            "message": message or _MESSAGES.get(error_type or "") or f"fake error {status}",
            "type": error_type if error_type and error_type.endswith("_error") else default_type,
            "param": None,
            "code": error_type or _OPENAI_CODES.get(status),
        }
    }


@dataclass
class Totals:
    input: int
    output: int
    reasoning: int
    cache_read: int
    cache_write: int

    def openai(self) -> dict[str, Any]:
        prompt = self.input + self.cache_read  # OpenAI's prompt_tokens include cached ones
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt + self.output,
            "prompt_tokens_details": {
                "cached_tokens": self.cache_read,
                "cache_write_tokens": self.cache_write,
            },
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        }

    def responses(self) -> dict[str, Any]:
        prompt = self.input + self.cache_read  # input_tokens include cached ones
        return {
            "input_tokens": prompt,
            "input_tokens_details": {
                "cached_tokens": self.cache_read,
                "cache_write_tokens": self.cache_write,
            },
            "output_tokens": self.output,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": prompt + self.output,
        }

    def anthropic(self, output: int | None = None) -> dict[str, Any]:
        return {
            "input_tokens": self.input,
            "output_tokens": self.output if output is None else output,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens_details": {"thinking_tokens": self.reasoning},
        }



def sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
