"""What a provider wire streams and what it needs: the model to call, the
prompt, the events of one turn; the API key lookup and the SDK client cache."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anthropic
import openai

from chatd.llm.classify import ChatErrorKind, ChatTurnError, make_error

__all__ = [
    "DUMMY_API_KEY",
    "PROVIDER_APIS",
    "PROVIDER_KINDS",
    "STREAM_CLOSED",
    "AUTH_HEADERS",
    "ClientCache",
    "Finished",
    "auth_headers",
    "ModelSpec",
    "PromptMessage",
    "ProviderKind",
    "ReasoningDelta",
    "StreamEvent",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallStart",
    "ToolSpec",
    "Usage",
    "estimate_usage",
    "resolve_api_key",
]

ProviderKind = Literal["openai", "openai-compat", "anthropic"]
PROVIDER_KINDS: tuple[str, ...] = ("openai", "openai-compat", "anthropic")
#: The HTTP APIs a provider row may speak (`providers.api`): Chat Completions
#: and the Responses API for the OpenAI kinds, Messages for anthropic.
PROVIDER_APIS: dict[str, tuple[str, ...]] = {
    "openai": ("chat_completions", "responses"),
    "openai-compat": ("chat_completions", "responses"),
    "anthropic": ("messages",),
}

#: Key sent to OpenAI-compatible servers configured without an API key env var
#: (local vLLM, Ollama, llama.cpp accept anything).
DUMMY_API_KEY = "chatd-no-key"

STREAM_CLOSED = "stream closed before the response completed"

#: How a provider row may send its key (`providers.auth_header`): `bearer`
#: (`Authorization: Bearer K`, what OpenAI documents) or `x-api-key`
#: (`x-api-key: K`, what Anthropic documents). NULL: the wire's documented one.
AUTH_HEADERS: tuple[str, ...] = ("bearer", "x-api-key")

#: Why a step stopped, in one vocabulary for every wire (`messages.finish_reason`).
_STOPS: dict[str, str] = {
    "stop": "stop",
    "completed": "stop",  # the Responses API's response.completed
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "model_context_window_exceeded": "length",
    "content_filter": "content_filter",
    "refusal": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
}


@dataclass(frozen=True)
class ModelSpec:
    """Which model to call and how: a `model_configs` row joined with its provider."""

    provider_kind: str  # 'openai' | 'openai-compat' | 'anthropic'
    provider_name: str
    base_url: str | None
    api_key_env: str | None
    model: str
    max_output_tokens: int
    auth_header: str | None = None  # AUTH_HEADERS; None: the wire's documented header
    # Chat Completions: send stream_options.include_usage and wait for the
    # usage chunk (providers.stream_usage); False: estimate usage instead
    stream_usage: bool = True
    # the HTTP API (providers.api, PROVIDER_APIS); None: the kind's default
    api: str | None = None
    # Anthropic extended thinking budget (model_configs.thinking_budget_tokens); None: off
    thinking_budget_tokens: int | None = None

    @property
    def wire(self) -> str:
        """The API this spec speaks: `api`, or the kind's default."""
        if self.api:
            return self.api
        return "messages" if self.provider_kind == "anthropic" else "chat_completions"


@dataclass(frozen=True)
class PromptMessage:
    """One message of the prompt: `messages.role` and its jsonb `content` parts."""

    role: str  # 'system' | 'user' | 'assistant' | 'tool'
    content: Sequence[Mapping[str, Any]] | str


@dataclass(frozen=True)
class TextDelta:
    """A piece of the assistant's visible text."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning ("thinking") text."""

    text: str


@dataclass(frozen=True)
class ReasoningSignature:
    """The reasoning block streamed since the last signature ends here, sealed
    by the provider (Anthropic's `signature_delta`). The signature must be
    sent back with that exact text when the turn continues after a tool call
    with extended thinking on; the worker stores it on the reasoning part."""

    signature: str


@dataclass(frozen=True)
class RedactedReasoning:
    """A reasoning block the provider encrypted (Anthropic `redacted_thinking`):
    nothing to show, its `data` is sent back as it came."""

    data: str


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model: `{name, description, input_schema}`."""

    name: str
    description: str
    input_schema: Mapping[str, Any]


@dataclass(frozen=True)
class ToolCallStart:
    """The model starts a tool call: its id and the tool's name (the input follows)."""

    call_id: str
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call's input, a JSON text streamed in fragments."""

    call_id: str
    fragment: str


@dataclass(frozen=True)
class Usage:
    """Token counts of one turn, in chatd's price buckets (None when not reported).

    `input_tokens` excludes cache reads and writes (OpenAI's `prompt_tokens`
    includes cached tokens; they are subtracted here), so the SQL cost, a sum
    over buckets, charges each token once. `output_tokens` includes reasoning
    tokens; `reasoning_tokens` is informational.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    estimated: bool = False  # counted by chatd (see estimate_usage), not reported


def estimate_usage(messages: Sequence[PromptMessage], output_chars: int) -> Usage:
    """Usage for a server that reports none: about 4 characters per token
    (OpenAI's rule of thumb for English text), rounded up, for the prompt's
    text and the streamed output; marked `estimated`."""
    prompt_chars = 0
    for message in messages:
        if isinstance(message.content, str):
            prompt_chars += len(message.content)
            continue
        for part in message.content:
            text = part.get("text") if isinstance(part, Mapping) else None
            prompt_chars += len(text) if isinstance(text, str) else 0
    return Usage(
        input_tokens=-(-prompt_chars // 4), output_tokens=-(-output_chars // 4), estimated=True
    )


@dataclass(frozen=True)
class Finished:
    """The provider completed the response; always the last event."""

    usage: Usage
    response_id: str | None
    finish_reason: str | None  # as the provider sent it

    @property
    def stop(self) -> str | None:
        """`finish_reason` in chatd's vocabulary: stop, length, content_filter,
        tool_calls, or other (what `messages.finish_reason` stores)."""
        if self.finish_reason is None:
            return None
        return _STOPS.get(self.finish_reason.lower(), "other")


StreamEvent = (
    TextDelta | ReasoningDelta | ReasoningSignature | RedactedReasoning | ToolCallStart | ToolCallDelta
    | Finished
)


def resolve_api_key(spec: ModelSpec) -> str:
    """The API key from `os.environ[spec.api_key_env]`; raises ChatTurnError(missing_key)."""
    if not spec.api_key_env:
        if spec.provider_kind == "openai-compat":
            return DUMMY_API_KEY
        raise ChatTurnError(
            make_error(
                ChatErrorKind.missing_key,
                spec.provider_name,
                retryable=False,
                message=f"provider {spec.provider_name!r} has no API key environment variable "
                "configured",
            )
        )
    key = os.environ.get(spec.api_key_env, "").strip()
    if not key:
        raise ChatTurnError(
            make_error(
                ChatErrorKind.missing_key,
                spec.provider_name,
                retryable=False,
                message=f"API key environment variable {spec.api_key_env} is not set "
                f"(provider {spec.provider_name!r})",
            )
        )
    return key


def auth_headers(scheme: str, api_key: str, omit: Any) -> dict[str, Any]:
    """Per-request headers that send the key as `scheme` (AUTH_HEADERS) and
    drop (`omit`) the other way the SDK would send it."""
    if scheme == "x-api-key":
        return {"X-Api-Key": api_key, "Authorization": omit}
    return {"Authorization": f"Bearer {api_key}", "X-Api-Key": omit}


class ClientCache:
    """SDK clients reused across turns, one per (kind, base_url, auth header, api_key).

    Every client has explicit timeouts (the SDKs' default read timeout is
    600 s): `connect_timeout` to open a connection, `read_timeout` between
    two reads of a response (`chatd.llm.stream_turn` raises it per request to
    cover its own startup and idle timeouts, which stay the ones that fire).
    Belongs to one event loop; call `aclose()` on shutdown.
    """

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 120.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        #: (base_url, provider name) of servers that refused stream_options
        self.no_stream_options: set[tuple[str | None, str]] = set()
        #: (base_url, provider name, model) that refused Responses reasoning summaries
        self.no_reasoning_summary: set[tuple[str | None, str, str]] = set()
        self._clients: dict[
            tuple[str, str | None, str, str], openai.AsyncOpenAI | anthropic.AsyncAnthropic
        ] = {}

    def timeout(self, sdk: Any, read: float | None = None) -> Any:
        """The `sdk` module's own Timeout (the SDKs may ship different HTTP
        libraries): connect, read (`read` or the cache's), write and pool."""
        return sdk.Timeout(
            max(30.0, self.connect_timeout),
            connect=self.connect_timeout,
            read=self.read_timeout if read is None else read,
        )

    def openai(self, spec: ModelSpec, api_key: str) -> openai.AsyncOpenAI:
        """An AsyncOpenAI client for `spec` (retries off; bearer token unless the row says)."""
        scheme = spec.auth_header or "bearer"
        key = ("openai", spec.base_url, scheme, api_key)
        client = self._clients.get(key)
        if not isinstance(client, openai.AsyncOpenAI):
            client = openai.AsyncOpenAI(
                api_key=api_key,
                base_url=spec.base_url,
                max_retries=0,
                timeout=self.timeout(openai),
            )
            self._clients[key] = client
        return client

    def anthropic(self, spec: ModelSpec, api_key: str) -> anthropic.AsyncAnthropic:
        """An AsyncAnthropic client for `spec` (retries off; `x-api-key` and
        `anthropic-version`, as the Anthropic API documents, unless the row
        says `bearer`)."""
        scheme = spec.auth_header or "x-api-key"
        key = ("anthropic", spec.base_url, scheme, api_key)
        client = self._clients.get(key)
        if not isinstance(client, anthropic.AsyncAnthropic):
            client = anthropic.AsyncAnthropic(
                api_key=api_key,
                base_url=spec.base_url,
                max_retries=0,
                timeout=self.timeout(anthropic),
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        """Close every cached client's connection pool."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
