"""One streaming turn through the official SDKs, whichever the provider wire.

`stream_turn(spec, messages, startup_timeout=...)` is an async iterator of
`TextDelta` / `ReasoningDelta` events ending with exactly one `Finished`.
Every failure surfaces as `ChatTurnError` carrying a classified `ChatError`
(see chatd.llm.classify); nothing else escapes except `asyncio.CancelledError`.

Guarantees the worker relies on:
- SDK retries are off (`max_retries=0`); chatd's SQL owns the retry policy.
- A stream that ends without the provider's terminal event (OpenAI: a choice
  with `finish_reason` and then, as usage is asked for, the usage chunk;
  Responses API: `response.completed` or `response.incomplete`; Anthropic:
  `message_stop`) raises a retryable `timeout` ("stream closed")
  and never yields `Finished`.
- No first event within `startup_timeout` seconds raises a retryable
  `startup_timeout`; no event for `idle_timeout` seconds after that a
  retryable `timeout` ("no data for N s").
- Every request carries explicit connect and read timeouts (the read one
  above both chatd timeouts, so those fire first).
- A chunk that is not valid JSON is a retryable transport fault (`timeout`).
- Closing or cancelling the iterator closes the HTTP response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from chatd.llm import anthropic_messages, openai_chat, openai_responses
from chatd.llm.classify import ChatErrorKind, ChatTurnError, classify, make_error
from chatd.llm.types import (
    PROVIDER_APIS,
    PROVIDER_KINDS,
    STREAM_CLOSED,
    ClientCache,
    Finished,
    ModelSpec,
    PromptMessage,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolSpec,
    Usage,
    estimate_usage,
    resolve_api_key,
)

__all__ = ["stream_turn"]


async def stream_turn(
    spec: ModelSpec,
    messages: Sequence[PromptMessage],
    *,
    startup_timeout: float,
    api_key: str | None = None,
    idle_timeout: float | None = None,
    clients: ClientCache | None = None,
    tools: Sequence[ToolSpec] = (),
) -> AsyncIterator[StreamEvent]:
    """Stream one assistant turn for `messages` from the model in `spec`.

    `api_key` overrides the environment lookup. `idle_timeout`, when given,
    bounds the gap between two events after the first (a retryable `timeout`).
    Without `clients`, a client is created for this turn and closed after it.
    `tools`: the tools offered to the model; with them, tool calls and
    results of the history are sent in the wire's native format.
    """
    _check_wire(spec, tools)
    key = api_key or resolve_api_key(spec)
    cache = clients or ClientCache()
    try:
        translator: _Translator[Any]
        open_stream: Callable[[], Awaitable[_SDKStream[Any]]]
        # the SDK's read timeout is a backstop: chatd's own timeouts fire first
        read = max(cache.read_timeout, startup_timeout + 1, (idle_timeout or 0) + 1)
        if spec.wire == "messages":
            translator, open_stream = anthropic_messages.prepare(cache, spec, key, messages, read, tools)
        elif spec.wire == "responses":
            translator, open_stream = openai_responses.prepare(cache, spec, key, messages, read)
        else:
            translator, open_stream = openai_chat.prepare(cache, spec, key, messages, read, tools)
        output_chars = 0
        async for event in _guarded(
            spec.provider_name, open_stream, translator, startup_timeout, idle_timeout
        ):
            if isinstance(event, Finished) and _unreported(event.usage):
                event = replace(event, usage=estimate_usage(messages, output_chars))
            elif isinstance(event, TextDelta | ReasoningDelta):
                output_chars += len(event.text)
            yield event
    finally:
        if clients is None:
            await cache.aclose()


def _check_wire(spec: ModelSpec, tools: Sequence[ToolSpec]) -> None:
    """Refuse (a non-retryable `config` ChatError) a provider kind or API
    chatd does not know, and tools on the Responses API (not supported yet)."""
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
    if spec.wire not in PROVIDER_APIS[spec.provider_kind]:
        raise ChatTurnError(
            make_error(
                ChatErrorKind.config,
                provider,
                retryable=False,
                message=f"provider kind {spec.provider_kind!r} does not speak the API {spec.wire!r}",
            )
        )
    if tools and spec.wire == "responses":
        raise ChatTurnError(
            make_error(
                ChatErrorKind.config,
                provider,
                retryable=False,
                message="tool calls are not supported on the Responses API yet: "
                "use api chat_completions for a chat with tools",
            )
        )


def _unreported(usage: Usage) -> bool:
    """The server reported no token counts at all (no usage chunk)."""
    return usage.input_tokens is None and usage.output_tokens is None


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
                chunk = await _bounded(
                    provider, stream.__anext__(), deadline, startup=first, idle=idle_timeout or 0
                )
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
    provider: str,
    awaitable: Awaitable[_T],
    deadline: float | None,
    *,
    startup: bool,
    idle: float = 0.0,
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
            kind, what = ChatErrorKind.startup_timeout, "no response started within the timeout"
        else:
            kind, what = ChatErrorKind.timeout, f"stream stalled: no data for {idle:g} s"
        raise ChatTurnError(
            make_error(kind, provider, retryable=True, message=f"{provider}: {what}")
        ) from exc
    except Exception as exc:  # every SDK / transport failure is classified
        raise ChatTurnError(classify(exc, provider)) from exc
