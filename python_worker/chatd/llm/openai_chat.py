"""The OpenAI Chat Completions wire (official OpenAI and compatible servers):
chatd prompt -> `messages`, streamed `ChatCompletionChunk` -> events."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionChunk

from chatd.llm.content import (
    count_attr,
    file_placeholder,
    file_source,
    output_text,
    parts,
    tool_text,
)
from chatd.llm.types import (
    ClientCache,
    Finished,
    ModelSpec,
    PromptMessage,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolSpec,
    Usage,
    auth_headers,
)

__all__ = ["OpenAITranslator", "prepare", "to_openai_messages"]


class OpenAITranslator:
    """ChatCompletionChunk -> events.

    Done once a choice carried a `finish_reason` and, when usage was asked
    for (`stream_options.include_usage`, `usage_expected`), the usage chunk
    OpenAI sends after it: a stream cut between the two is not a success.
    SDK objects are read with defaults, so an older SDK's types (without
    `cache_write_tokens`, `completion_tokens_details`, ...) cannot break it.
    """

    def __init__(self, *, usage_expected: bool = True) -> None:
        self.response_id: str | None = None
        self.finish_reason: str | None = None
        self.usage_expected = usage_expected
        self.usage_seen = False
        self.usage = Usage()
        self.call_ids: dict[int, str] = {}  # tool_calls delta index -> call id

    def feed(self, chunk: ChatCompletionChunk) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        self.response_id = self.response_id or getattr(chunk, "id", None) or None
        u = getattr(chunk, "usage", None)
        if u is not None:
            self.usage_seen = True
            prompt_details = getattr(u, "prompt_tokens_details", None)
            cached = count_attr(prompt_details, "cached_tokens")
            written = count_attr(prompt_details, "cache_write_tokens")
            prompt = count_attr(u, "prompt_tokens")
            self.usage = Usage(
                input_tokens=None if prompt is None else max(0, prompt - (cached or 0)),
                output_tokens=count_attr(u, "completion_tokens"),
                reasoning_tokens=count_attr(
                    getattr(u, "completion_tokens_details", None), "reasoning_tokens"
                ),
                cache_read_tokens=cached,
                cache_write_tokens=written,
            )
        for choice in getattr(chunk, "choices", None) or ():
            if getattr(choice, "index", 0) != 0:
                continue
            delta = getattr(choice, "delta", None)
            extra = getattr(delta, "model_extra", None) or {}
            # OpenAI-compatible servers stream reasoning under one of these names.
            for name in ("reasoning_content", "reasoning"):
                reasoning_text = extra.get(name)
                if isinstance(reasoning_text, str) and reasoning_text:
                    events.append(ReasoningDelta(reasoning_text))
                    break
            content = getattr(delta, "content", None)
            if isinstance(content, str) and content:
                events.append(TextDelta(content))
            events.extend(self._tool_calls(getattr(delta, "tool_calls", None) or ()))
            finish_reason = getattr(choice, "finish_reason", None)
            if finish_reason is not None:
                self.finish_reason = str(finish_reason)
        return events

    def _tool_calls(self, deltas: Iterable[Any]) -> list[StreamEvent]:
        """Streamed `tool_calls` deltas: the first of an index carries its id
        and name, the next ones pieces of `function.arguments`."""
        events: list[StreamEvent] = []
        for tc in deltas:
            index = getattr(tc, "index", 0) or 0
            function = getattr(tc, "function", None)
            if index not in self.call_ids:
                call_id = getattr(tc, "id", None) or f"call_{index}"
                self.call_ids[index] = str(call_id)
                events.append(ToolCallStart(str(call_id), str(getattr(function, "name", None) or "")))
            arguments = getattr(function, "arguments", None)
            if isinstance(arguments, str) and arguments:
                events.append(ToolCallDelta(self.call_ids[index], arguments))
        return events

    def finished(self) -> Finished | None:
        if self.finish_reason is None or (self.usage_expected and not self.usage_seen):
            return None
        return Finished(self.usage, self.response_id, self.finish_reason)


def _native_tool_messages(message: PromptMessage) -> list[dict[str, Any]] | None:
    """An assistant step with tool calls, or a tool message, in the native
    format (`tool_calls`, role `tool`); None for any other message."""
    items = parts(message.content)
    if message.role == "tool":
        return [
            {"role": "tool", "tool_call_id": str(p.get("tool_call_id")), "content": output_text(p)}
            for p in items if p.get("type") == "tool-result"
        ]
    calls = [p for p in items if p.get("type") == "tool-call"]
    if message.role != "assistant" or not calls:
        return None
    text = "\n\n".join(str(p["text"]) for p in items if p.get("type") == "text" and p.get("text"))
    return [{
        "role": "assistant",
        "content": text or None,
        "tool_calls": [
            {"id": str(c.get("tool_call_id")), "type": "function",
             "function": {"name": str(c.get("tool_name")), "arguments": json.dumps(c.get("input") or {})}}
            for c in calls
        ],
    }]


def to_openai_messages(messages: Iterable[PromptMessage], *, native_tools: bool = False) -> list[dict[str, Any]]:
    """chatd messages -> Chat Completions `messages` (reasoning parts are dropped).
    `native_tools`: tool calls and results in the native format (a request
    that offers tools), else as text."""
    out: list[dict[str, Any]] = []
    for message in messages:
        native = _native_tool_messages(message) if native_tools else None
        if native is not None:
            out.extend(native)
            continue
        texts: list[str] = []
        rich: list[dict[str, Any]] = []
        for part in parts(message.content):
            kind = part.get("type")
            if kind == "text" and part.get("text"):
                texts.append(str(part["text"]))
                rich.append({"type": "text", "text": str(part["text"])})
            elif kind in ("tool-call", "tool-result"):
                text = tool_text(part) or ""
                texts.append(text)
                rich.append({"type": "text", "text": text})
            elif kind == "file":
                media_type, data, url = file_source(part)
                if message.role == "user" and media_type.startswith("image/") and (data or url):
                    image_url = url or f"data:{media_type};base64,{data}"
                    rich.append({"type": "image_url", "image_url": {"url": image_url}})
                else:
                    texts.append(file_placeholder(part))
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


def prepare(
    cache: ClientCache,
    spec: ModelSpec,
    key: str,
    messages: Sequence[PromptMessage],
    read_timeout: float,
    tools: Sequence[ToolSpec] = (),
) -> tuple[OpenAITranslator, Callable[[], Awaitable[Any]]]:
    """The translator and the request of one streamed turn."""
    server = (spec.base_url, spec.provider_name)
    send_options = spec.stream_usage and server not in cache.no_stream_options
    translator = OpenAITranslator(usage_expected=send_options)
    client_o = cache.openai(spec, key)
    conversation = to_openai_messages(messages, native_tools=bool(tools))
    tool_list = [
        {"type": "function", "function": {"name": t.name, "description": t.description,
                                          "parameters": dict(t.input_schema)}}
        for t in tools
    ]
    # Official OpenAI wants max_completion_tokens; most compatible servers
    # still only know max_tokens.
    official = spec.provider_kind == "openai"
    headers = auth_headers(spec.auth_header or "bearer", key, openai.omit)

    async def create(with_options: bool) -> Any:
        return await client_o.chat.completions.create(
            model=spec.model,
            messages=cast(Any, conversation),
            stream=True,
            timeout=cache.timeout(openai, read_timeout),
            extra_headers=headers,
            stream_options={"include_usage": True} if with_options else openai.omit,
            max_completion_tokens=spec.max_output_tokens if official else openai.omit,
            max_tokens=openai.omit if official else spec.max_output_tokens,
            tools=cast(Any, tool_list) if tool_list else openai.omit,
        )

    async def open_stream() -> Any:
        if not send_options:
            return await create(False)
        try:
            return await create(True)
        except openai.BadRequestError as exc:
            if "stream_options" not in str(exc):
                raise
        # A server that rejects stream_options: once more without it, and
        # never again on this server; usage is then estimated.
        cache.no_stream_options.add(server)
        translator.usage_expected = False
        return await create(False)

    return translator, open_stream
