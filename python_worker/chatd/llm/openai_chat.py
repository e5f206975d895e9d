"""The OpenAI Chat Completions wire (official OpenAI and compatible servers):
chatd prompt -> `messages`, streamed `ChatCompletionChunk` -> events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import openai
from openai.types.chat import ChatCompletionChunk

from chatd.llm.content import file_placeholder, file_source, parts, tool_text
from chatd.llm.types import (
    ClientCache,
    Finished,
    ModelSpec,
    PromptMessage,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    Usage,
)

__all__ = ["OpenAITranslator", "prepare", "to_openai_messages"]


class OpenAITranslator:
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



def to_openai_messages(messages: Iterable[PromptMessage]) -> list[dict[str, Any]]:
    """chatd messages -> Chat Completions `messages` (reasoning parts are dropped)."""
    out: list[dict[str, Any]] = []
    for message in messages:
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
    cache: ClientCache, spec: ModelSpec, key: str, messages: Sequence[PromptMessage]
) -> tuple[OpenAITranslator, Callable[[], Awaitable[Any]]]:
    """The translator and the request of one streamed turn."""
    translator = OpenAITranslator()
    client_o = cache.openai(spec, key)
    conversation = to_openai_messages(messages)
    # Official OpenAI wants max_completion_tokens; most compatible servers
    # still only know max_tokens.
    official = spec.provider_kind == "openai"

    async def open_stream() -> Any:
        return await client_o.chat.completions.create(
            model=spec.model,
            messages=cast(Any, conversation),
            stream=True,
            stream_options={"include_usage": True},
            max_completion_tokens=spec.max_output_tokens if official else openai.omit,
            max_tokens=openai.omit if official else spec.max_output_tokens,
        )

    return translator, open_stream
