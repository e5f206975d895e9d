"""The Anthropic Messages wire: chatd prompt -> (`system`, `messages`),
streamed `RawMessageStreamEvent` -> events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import anthropic
from anthropic.types import RawMessageStreamEvent

from chatd.llm.content import (
    count_attr,
    file_placeholder,
    file_source,
    first,
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
    ReasoningSignature,
    RedactedReasoning,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolSpec,
    Usage,
    auth_headers,
)

__all__ = ["AnthropicTranslator", "prepare", "to_anthropic_messages"]


class AnthropicTranslator:
    """RawMessageStreamEvent -> events; done at message_stop.

    SDK objects are read with defaults (`getattr`), so an older SDK's types
    (without `output_tokens_details`, cache counts, ...) cannot break it.
    """

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.stop_reason: str | None = None
        self.stopped = False
        self.usage = Usage()
        self.call_ids: dict[int, str] = {}  # content block index -> tool_use id

    def feed(self, event: RawMessageStreamEvent) -> list[StreamEvent]:
        kind = getattr(event, "type", None)
        if kind == "content_block_start":
            block = getattr(event, "content_block", None)
            if getattr(block, "type", None) == "redacted_thinking":
                data = getattr(block, "data", None)
                return [RedactedReasoning(data)] if isinstance(data, str) and data else []
            if getattr(block, "type", None) == "tool_use":
                index = getattr(event, "index", 0) or 0
                call_id = str(getattr(block, "id", None) or f"toolu_{index}")
                self.call_ids[index] = call_id
                return [ToolCallStart(call_id, str(getattr(block, "name", None) or ""))]
        elif kind == "message_start":
            message = getattr(event, "message", None)
            u = getattr(message, "usage", None)
            self.response_id = getattr(message, "id", None)
            self.usage = Usage(
                input_tokens=count_attr(u, "input_tokens"),
                output_tokens=count_attr(u, "output_tokens"),
                reasoning_tokens=count_attr(
                    getattr(u, "output_tokens_details", None), "thinking_tokens"
                ),
                cache_read_tokens=count_attr(u, "cache_read_input_tokens"),
                cache_write_tokens=count_attr(u, "cache_creation_input_tokens"),
            )
        elif kind == "content_block_delta":
            return self._delta(event)
        elif kind == "message_delta":
            # message_delta usage is cumulative; absent fields keep message_start's.
            d, prev = getattr(event, "usage", None), self.usage
            self.stop_reason = getattr(getattr(event, "delta", None), "stop_reason", None) or (
                self.stop_reason
            )
            self.usage = Usage(
                input_tokens=first(count_attr(d, "input_tokens"), prev.input_tokens),
                output_tokens=first(count_attr(d, "output_tokens"), prev.output_tokens),
                reasoning_tokens=first(
                    count_attr(getattr(d, "output_tokens_details", None), "thinking_tokens"),
                    prev.reasoning_tokens,
                ),
                cache_read_tokens=first(
                    count_attr(d, "cache_read_input_tokens"), prev.cache_read_tokens
                ),
                cache_write_tokens=first(
                    count_attr(d, "cache_creation_input_tokens"), prev.cache_write_tokens
                ),
            )
        elif kind == "message_stop":
            self.stopped = True
        return []

    def _delta(self, event: RawMessageStreamEvent) -> list[StreamEvent]:
        """A `content_block_delta`: text, tool input, thinking or its signature."""
        delta = getattr(event, "delta", None)
        delta_type = getattr(delta, "type", None)
        if delta_type == "text_delta":
            text = getattr(delta, "text", None)
            return [TextDelta(text)] if isinstance(text, str) and text else []
        if delta_type == "input_json_delta":
            fragment = getattr(delta, "partial_json", None)
            owner = self.call_ids.get(getattr(event, "index", 0) or 0)
            if owner is None or not isinstance(fragment, str) or not fragment:
                return []
            return [ToolCallDelta(owner, fragment)]
        if delta_type == "thinking_delta":
            thinking = getattr(delta, "thinking", None)
            return [ReasoningDelta(thinking)] if isinstance(thinking, str) and thinking else []
        if delta_type == "signature_delta":
            signature = getattr(delta, "signature", None)
            return [ReasoningSignature(signature)] if isinstance(signature, str) and signature else []
        return []

    def finished(self) -> Finished | None:
        if not self.stopped:
            return None
        return Finished(self.usage, self.response_id, self.stop_reason)


def _native_block(part: Mapping[str, Any]) -> dict[str, Any] | None:
    """A tool-call part as a `tool_use` block, a tool-result part as a
    `tool_result` block; None for any other part."""
    if part.get("type") == "tool-call":
        return {"type": "tool_use", "id": str(part.get("tool_call_id")), "name": str(part.get("tool_name")),
                "input": part.get("input") or {}}
    if part.get("type") == "tool-result":
        return {"type": "tool_result", "tool_use_id": str(part.get("tool_call_id")),
                "content": output_text(part), "is_error": bool(part.get("is_error"))}
    return None


def _thinking_block(part: Mapping[str, Any]) -> dict[str, Any] | None:
    """A reasoning part the provider sealed, as the block it came in:
    `thinking` with its signature, or `redacted_thinking` with its data; None
    for reasoning without a seal (another provider's, or cut short)."""
    if isinstance(part.get("redacted"), str) and part["redacted"]:
        return {"type": "redacted_thinking", "data": part["redacted"]}
    if isinstance(part.get("signature"), str) and part["signature"] and isinstance(part.get("text"), str):
        return {"type": "thinking", "thinking": part["text"], "signature": part["signature"]}
    return None


def to_anthropic_messages(
    messages: Iterable[PromptMessage], *, native_tools: bool = False, thinking: bool = False
) -> tuple[str | None, list[dict[str, Any]]]:
    """chatd messages -> (Anthropic `system`, `messages`).

    System messages are joined into `system`; tool messages become user turns;
    consecutive turns of one role are merged. Reasoning parts are dropped,
    except with `thinking` (a request with extended thinking on): then an
    assistant message's sealed reasoning parts go back as the `thinking` /
    `redacted_thinking` blocks they came as, signature and all, which the
    Messages API requires before the `tool_use` blocks of a turn that
    continues after a tool call.
    `native_tools`: tool calls and results as `tool_use` / `tool_result`
    blocks (a request that offers tools), else as text.
    """
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        blocks: list[dict[str, Any]] = []
        for part in parts(message.content):
            kind = part.get("type")
            if kind == "text" and part.get("text"):
                blocks.append({"type": "text", "text": str(part["text"])})
            elif kind in ("tool-call", "tool-result"):
                native = _native_block(part) if native_tools else None
                blocks.append(native or {"type": "text", "text": tool_text(part) or ""})
            elif kind == "file":
                blocks.append(_anthropic_file_block(part, message.role))
            elif kind == "reasoning" and thinking and message.role == "assistant":
                sealed = _thinking_block(part)
                if sealed is not None:
                    blocks.append(sealed)
        if not blocks:
            continue
        if message.role == "system":
            system.extend(str(b["text"]) for b in blocks if b["type"] == "text")
            continue
        role = "assistant" if message.role == "assistant" else "user"
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return ("\n\n".join(system) or None), out


def _anthropic_file_block(part: Mapping[str, Any], role: str) -> dict[str, Any]:
    media_type, data, url = file_source(part)
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
    return {"type": "text", "text": file_placeholder(part)}


def prepare(
    cache: ClientCache,
    spec: ModelSpec,
    key: str,
    messages: Sequence[PromptMessage],
    read_timeout: float,
    tools: Sequence[ToolSpec] = (),
) -> tuple[AnthropicTranslator, Callable[[], Awaitable[Any]]]:
    """The translator and the request of one streamed turn."""
    translator = AnthropicTranslator()
    client_a = cache.anthropic(spec, key)
    system, conversation = to_anthropic_messages(
        messages, native_tools=bool(tools), thinking=spec.thinking_budget_tokens is not None
    )
    tool_list = [
        {"name": t.name, "description": t.description, "input_schema": dict(t.input_schema)} for t in tools
    ]

    headers = auth_headers(spec.auth_header or "x-api-key", key, anthropic.omit)

    async def open_stream() -> Any:
        return await client_a.messages.create(
            model=spec.model,
            max_tokens=spec.max_output_tokens,
            messages=cast(Any, conversation),
            stream=True,
            timeout=cache.timeout(anthropic, read_timeout),
            extra_headers=headers,
            system=system if system else anthropic.omit,
            thinking=thinking(spec),
            tools=cast(Any, tool_list) if tool_list else anthropic.omit,
        )

    return translator, open_stream


def thinking(spec: ModelSpec) -> Any:
    """The `thinking` parameter: extended thinking with the model config's
    budget (`model_configs.thinking_budget_tokens`, below `max_tokens`, as the
    Messages API requires; checked when the model is configured), or omitted.
    Its `thinking_delta`s stream as reasoning parts (`AnthropicTranslator`)."""
    if spec.thinking_budget_tokens is None:
        return anthropic.omit
    return {"type": "enabled", "budget_tokens": spec.thinking_budget_tokens}
