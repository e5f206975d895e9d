"""LLM provider adapters: one streaming turn through the official SDKs.

`stream_turn(spec, messages, startup_timeout=...)` is an async iterator of
`TextDelta` / `ReasoningDelta` events ending with exactly one `Finished`.
Every failure surfaces as `ChatTurnError` carrying a classified `ChatError`
(see chatd.errors); nothing else escapes except `asyncio.CancelledError`.

Guarantees the worker relies on:
- SDK retries are off (`max_retries=0`); chatd's SQL owns the retry policy.
- A stream that ends without the provider's terminal event (OpenAI: a choice
  with `finish_reason`; Anthropic: `message_stop`) raises a retryable
  `timeout` and never yields `Finished`.
- No first event within `startup_timeout` seconds raises a retryable
  `startup_timeout`.
- Closing or cancelling the iterator closes the HTTP response.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, cast

import anthropic
import openai
from anthropic.types import RawMessageStreamEvent
from openai.types.chat import ChatCompletionChunk

from chatd.errors import ChatErrorKind, ChatTurnError, classify, make_error

__all__ = [
    "ClientCache",
    "Finished",
    "ModelSpec",
    "PromptMessage",
    "ReasoningDelta",
    "StreamEvent",
    "TextDelta",
    "Usage",
    "resolve_api_key",
    "stream_turn",
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


async def stream_turn(
    spec: ModelSpec,
    messages: Sequence[PromptMessage],
    *,
    startup_timeout: float,
    api_key: str | None = None,
    idle_timeout: float | None = None,
    clients: ClientCache | None = None,
) -> AsyncIterator[StreamEvent]:
    """Stream one assistant turn for `messages` from the model in `spec`.

    `api_key` overrides the environment lookup. `idle_timeout`, when given,
    bounds the gap between two events after the first (a retryable `timeout`).
    Without `clients`, a client is created for this turn and closed after it.
    """
    provider = spec.provider_name
    if spec.provider_kind not in PROVIDER_KINDS:
        raise ChatTurnError(
            make_error(
                ChatErrorKind.config,
                provider,
                retryable=False,
                message=f"unknown provider kind {spec.provider_kind!r}",
            )
        )
    key = api_key or resolve_api_key(spec)
    cache = clients or ClientCache()
    try:
        translator: _Translator[Any]
        if spec.provider_kind == "anthropic":
            translator = _AnthropicTranslator()
            client_a = cache.anthropic(spec, key)
            system, conversation = to_anthropic_messages(messages)

            async def open_stream() -> _SDKStream[Any]:
                return await client_a.messages.create(
                    model=spec.model,
                    max_tokens=spec.max_output_tokens,
                    messages=cast(Any, conversation),
                    stream=True,
                    system=system if system else anthropic.omit,
                )

        else:
            translator = _OpenAITranslator()
            client_o = cache.openai(spec, key)
            conversation = to_openai_messages(messages)
            # Official OpenAI wants max_completion_tokens; most compatible servers
            # still only know max_tokens.
            official = spec.provider_kind == "openai"

            async def open_stream() -> _SDKStream[Any]:
                return await client_o.chat.completions.create(
                    model=spec.model,
                    messages=cast(Any, conversation),
                    stream=True,
                    stream_options={"include_usage": True},
                    max_completion_tokens=spec.max_output_tokens if official else openai.omit,
                    max_tokens=openai.omit if official else spec.max_output_tokens,
                )

        async for event in _guarded(
            provider, open_stream, translator, startup_timeout, idle_timeout
        ):
            yield event
    finally:
        if clients is None:
            await cache.aclose()


# --------------------------------------------------------------------------- streaming core

_Chunk = TypeVar("_Chunk")
_Chunk_co = TypeVar("_Chunk_co", covariant=True)
_Chunk_contra = TypeVar("_Chunk_contra", contravariant=True)


class _SDKStream(Protocol[_Chunk_co]):
    """What both SDKs' AsyncStream offer."""

    def __anext__(self) -> Awaitable[_Chunk_co]: ...

    async def close(self) -> None: ...


class _Translator(Protocol[_Chunk_contra]):
    def feed(self, chunk: _Chunk_contra) -> list[StreamEvent]: ...

    def finished(self) -> Finished | None: ...


async def _guarded(
    provider: str,
    open_stream: Callable[[], Awaitable[_SDKStream[_Chunk]]],
    translator: _Translator[_Chunk],
    startup_timeout: float,
    idle_timeout: float | None,
) -> AsyncIterator[StreamEvent]:
    """Run the SDK stream under the startup/idle timeouts and error classification."""
    loop = asyncio.get_running_loop()
    startup_deadline = loop.time() + startup_timeout
    stream = await _bounded(provider, open_stream(), startup_deadline, startup=True)
    try:
        first = True
        while True:
            if first:
                deadline: float | None = startup_deadline
            else:
                deadline = None if idle_timeout is None else loop.time() + idle_timeout
            try:
                chunk = await _bounded(provider, stream.__anext__(), deadline, startup=first)
            except StopAsyncIteration:
                break
            first = False
            for event in translator.feed(chunk):
                yield event
    finally:
        # Runs on normal end, errors, aclose() and cancellation alike.
        await stream.close()
    done = translator.finished()
    if done is None:
        raise ChatTurnError(
            make_error(
                ChatErrorKind.timeout,
                provider,
                retryable=True,
                message=f"{provider}: {STREAM_CLOSED}",
                detail=STREAM_CLOSED,
            )
        )
    yield done


_T = TypeVar("_T")


async def _bounded(
    provider: str, awaitable: Awaitable[_T], deadline: float | None, *, startup: bool
) -> _T:
    """Await with an optional deadline; convert failures to ChatTurnError.

    StopAsyncIteration and cancellation pass through untouched.
    """
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            return await awaitable
    except (StopAsyncIteration, ChatTurnError):
        raise
    except TimeoutError as exc:
        if not timeout.expired():
            raise ChatTurnError(classify(exc, provider)) from exc
        if startup:
            kind, what = ChatErrorKind.startup_timeout, "no response started within"
        else:
            kind, what = ChatErrorKind.timeout, "stream stalled: no data for"
        raise ChatTurnError(
            make_error(
                kind,
                provider,
                retryable=True,
                message=f"{provider}: {what} the timeout",
            )
        ) from exc
    except Exception as exc:  # every SDK / transport failure is classified
        raise ChatTurnError(classify(exc, provider)) from exc


class _OpenAITranslator:
    """ChatCompletionChunk -> events; done once a choice carries a finish_reason."""

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.finish_reason: str | None = None
        self.usage = Usage()

    def feed(self, chunk: ChatCompletionChunk) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        self.response_id = self.response_id or chunk.id or None
        if chunk.usage is not None:
            u = chunk.usage
            cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else None
            written = (
                u.prompt_tokens_details.cache_write_tokens if u.prompt_tokens_details else None
            )
            reasoning = (
                u.completion_tokens_details.reasoning_tokens
                if u.completion_tokens_details
                else None
            )
            self.usage = Usage(
                input_tokens=max(0, u.prompt_tokens - (cached or 0)),
                output_tokens=u.completion_tokens,
                reasoning_tokens=reasoning,
                cache_read_tokens=cached,
                cache_write_tokens=written,
            )
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            extra = choice.delta.model_extra or {}
            # OpenAI-compatible servers stream reasoning under one of these names.
            for name in ("reasoning_content", "reasoning"):
                reasoning_text = extra.get(name)
                if isinstance(reasoning_text, str) and reasoning_text:
                    events.append(ReasoningDelta(reasoning_text))
                    break
            if choice.delta.content:
                events.append(TextDelta(choice.delta.content))
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
        return events

    def finished(self) -> Finished | None:
        if self.finish_reason is None:
            return None
        return Finished(self.usage, self.response_id, self.finish_reason)


class _AnthropicTranslator:
    """RawMessageStreamEvent -> events; done at message_stop."""

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.stop_reason: str | None = None
        self.stopped = False
        self.usage = Usage()

    def feed(self, event: RawMessageStreamEvent) -> list[StreamEvent]:
        if event.type == "message_start":
            u = event.message.usage
            self.response_id = event.message.id
            self.usage = Usage(
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                reasoning_tokens=u.output_tokens_details.thinking_tokens
                if u.output_tokens_details
                else None,
                cache_read_tokens=u.cache_read_input_tokens,
                cache_write_tokens=u.cache_creation_input_tokens,
            )
        elif event.type == "content_block_delta":
            if event.delta.type == "text_delta" and event.delta.text:
                return [TextDelta(event.delta.text)]
            if event.delta.type == "thinking_delta" and event.delta.thinking:
                return [ReasoningDelta(event.delta.thinking)]
        elif event.type == "message_delta":
            # message_delta usage is cumulative; absent fields keep message_start's.
            d, prev = event.usage, self.usage
            self.stop_reason = event.delta.stop_reason or self.stop_reason
            self.usage = Usage(
                input_tokens=_first(d.input_tokens, prev.input_tokens),
                output_tokens=d.output_tokens,
                reasoning_tokens=d.output_tokens_details.thinking_tokens
                if d.output_tokens_details
                else prev.reasoning_tokens,
                cache_read_tokens=_first(d.cache_read_input_tokens, prev.cache_read_tokens),
                cache_write_tokens=_first(d.cache_creation_input_tokens, prev.cache_write_tokens),
            )
        elif event.type == "message_stop":
            self.stopped = True
        return []

    def finished(self) -> Finished | None:
        if not self.stopped:
            return None
        return Finished(self.usage, self.response_id, self.stop_reason)


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


# --------------------------------------------------------------------------- prompt mapping
#
# chatd does not send tool definitions yet (client-executed tools are reserved,
# see `requires_action`). Both APIs reject tool-call history without matching
# tool definitions, so tool calls and tool results are rendered as plain text:
# the model still sees what happened, and the request stays valid.


def _parts(content: Sequence[Mapping[str, Any]] | str) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content if isinstance(p, Mapping)]


def _tool_text(part: Mapping[str, Any]) -> str | None:
    """Plain-text rendering of a tool-call / tool-result part."""
    name = part.get("tool_name") or part.get("toolName") or part.get("name") or "tool"
    if part.get("type") == "tool-call":
        args = part.get("args", part.get("input", part.get("arguments", {})))
        rendered = args if isinstance(args, str) else json.dumps(args, sort_keys=True)
        return f"[tool call {name}({rendered})]"
    if part.get("type") == "tool-result":
        result = part.get("result", part.get("output", part.get("content", "")))
        rendered = result if isinstance(result, str) else json.dumps(result, sort_keys=True)
        return f"[tool result {name}: {rendered}]"
    return None


def _file_source(part: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """(media_type, base64 data, url) of a file part."""
    media_type = str(part.get("media_type") or part.get("mediaType") or part.get("mime_type") or "")
    data = part.get("data")
    url = part.get("url")
    return (
        media_type,
        data if isinstance(data, str) else None,
        url if isinstance(url, str) else None,
    )


def _file_placeholder(part: Mapping[str, Any]) -> str:
    media_type, _, _ = _file_source(part)
    return (
        f"[attached file {part.get('name') or part.get('filename') or ''} ({media_type}) omitted]"
    )


def to_openai_messages(messages: Iterable[PromptMessage]) -> list[dict[str, Any]]:
    """chatd messages -> Chat Completions `messages` (reasoning parts are dropped)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        texts: list[str] = []
        rich: list[dict[str, Any]] = []
        for part in _parts(message.content):
            kind = part.get("type")
            if kind == "text" and part.get("text"):
                texts.append(str(part["text"]))
                rich.append({"type": "text", "text": str(part["text"])})
            elif kind in ("tool-call", "tool-result"):
                text = _tool_text(part) or ""
                texts.append(text)
                rich.append({"type": "text", "text": text})
            elif kind == "file":
                media_type, data, url = _file_source(part)
                if message.role == "user" and media_type.startswith("image/") and (data or url):
                    image_url = url or f"data:{media_type};base64,{data}"
                    rich.append({"type": "image_url", "image_url": {"url": image_url}})
                else:
                    texts.append(_file_placeholder(part))
                    rich.append({"type": "text", "text": texts[-1]})
            # 'reasoning' parts are never sent back.
        if not rich:
            continue
        role = "user" if message.role == "tool" else message.role
        if role not in ("system", "user", "assistant"):
            role = "user"
        has_image = any(p["type"] == "image_url" for p in rich)
        content: Any = rich if has_image else "\n\n".join(texts)
        out.append({"role": role, "content": content})
    return out


def to_anthropic_messages(
    messages: Iterable[PromptMessage],
) -> tuple[str | None, list[dict[str, Any]]]:
    """chatd messages -> (Anthropic `system`, `messages`).

    System messages are joined into `system`; tool messages become user turns;
    consecutive turns of one role are merged; reasoning parts are dropped
    (Anthropic needs the original signature to accept thinking blocks back).
    """
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        blocks: list[dict[str, Any]] = []
        for part in _parts(message.content):
            kind = part.get("type")
            if kind == "text" and part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
            elif kind in ("tool-call", "tool-result"):
                blocks.append({"type": "text", "text": _tool_text(part) or ""})
            elif kind == "file":
                blocks.append(_anthropic_file_block(part, message.role))
        if not blocks:
            continue
        if message.role == "system":
            system.extend(b["text"] for b in blocks if b["type"] == "text")
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return ("\n\n".join(system) or None), out


def _anthropic_file_block(part: Mapping[str, Any], role: str) -> dict[str, Any]:
    media_type, data, url = _file_source(part)
    if role == "user" and (data or url):
        source: dict[str, Any] = (
            {"type": "base64", "media_type": media_type, "data": data}
            if data
            else {"type": "url", "url": url}
        )
        if media_type.startswith("image/"):
            return {"type": "image", "source": source}
        if media_type == "application/pdf":
            return {"type": "document", "source": source}
    return {"type": "text", "text": _file_placeholder(part)}


__all__ += ["to_anthropic_messages", "to_openai_messages", "STREAM_CLOSED", "ProviderKind"]
