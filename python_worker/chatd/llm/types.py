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
    "PROVIDER_KINDS",
    "STREAM_CLOSED",
    "ClientCache",
    "Finished",
    "ModelSpec",
    "PromptMessage",
    "ProviderKind",
    "ReasoningDelta",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "resolve_api_key",
]

ProviderKind = Literal["openai", "openai-compat", "anthropic"]
PROVIDER_KINDS: tuple[str, ...] = ("openai", "openai-compat", "anthropic")

#: Key sent to OpenAI-compatible servers configured without an API key env var
#: (local vLLM, Ollama, llama.cpp accept anything).
DUMMY_API_KEY = "chatd-no-key"

STREAM_CLOSED = "stream closed before the response completed"


@dataclass(frozen=True)
class ModelSpec:
    """Which model to call and how: a `model_configs` row joined with its provider."""

    provider_kind: str  # 'openai' | 'openai-compat' | 'anthropic'
    provider_name: str
    base_url: str | None
    api_key_env: str | None
    model: str
    max_output_tokens: int


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


@dataclass(frozen=True)
class Finished:
    """The provider completed the response; always the last event."""

    usage: Usage
    response_id: str | None
    finish_reason: str | None


StreamEvent = TextDelta | ReasoningDelta | Finished


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


class ClientCache:
    """SDK clients reused across turns, one per (kind, base_url, api_key).

    Belongs to one event loop; call `aclose()` on shutdown.
    """

    def __init__(self) -> None:
        self._clients: dict[
            tuple[str, str | None, str], openai.AsyncOpenAI | anthropic.AsyncAnthropic
        ] = {}

    def openai(self, spec: ModelSpec, api_key: str) -> openai.AsyncOpenAI:
        """An AsyncOpenAI client for `spec` (retries off)."""
        key = ("openai", spec.base_url, api_key)
        client = self._clients.get(key)
        if not isinstance(client, openai.AsyncOpenAI):
            client = openai.AsyncOpenAI(api_key=api_key, base_url=spec.base_url, max_retries=0)
            self._clients[key] = client
        return client

    def anthropic(self, spec: ModelSpec, api_key: str) -> anthropic.AsyncAnthropic:
        """An AsyncAnthropic client for `spec` (retries off)."""
        key = ("anthropic", spec.base_url, api_key)
        client = self._clients.get(key)
        if not isinstance(client, anthropic.AsyncAnthropic):
            client = anthropic.AsyncAnthropic(
                api_key=api_key, base_url=spec.base_url, max_retries=0
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        """Close every cached client's connection pool."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
