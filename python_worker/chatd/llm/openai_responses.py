"""The OpenAI Responses API wire (`POST /responses`, official OpenAI and
compatible servers; a provider row with `api = 'responses'`): chatd prompt ->
`input` items, streamed `ResponseStreamEvent`s -> events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import openai

from chatd.llm.classify import ChatTurnError, classify_stream_event
from chatd.llm.content import count_attr
from chatd.llm.openai_chat import to_openai_messages
from chatd.llm.types import (
    ClientCache,
    Finished,
    ModelSpec,
    PromptMessage,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    Usage,
    auth_headers,
)

__all__ = ["ResponsesTranslator", "prepare", "to_responses_input"]

_Handler = Callable[[Any], list[StreamEvent]]


class ResponsesTranslator:
    """ResponseStreamEvent -> events; done at `response.completed` (or
    `response.incomplete`, a finished step that stopped early: the output
    limit, `max_output_tokens` -> `length`, or the content filter).

    `response.failed` and `error` events raise `ChatTurnError`, classified
    by `chatd.llm.classify.classify_stream_event`. Events are dispatched by
    their `type` through `handlers`; a function-call handler slots in by
    adding `response.output_item.added` / `response.function_call_arguments.*`
    / `response.output_item.done` entries and setting `completed_reason` to
    `tool_calls`. Unknown event types are ignored. SDK objects are read with
    defaults (`getattr`), so an older or newer SDK's types cannot break it.
    """

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.response_id: str | None = None
        self.finish_reason: str | None = None
        #: the finish reason of a `response.completed`
        self.completed_reason = "completed"
        self.done = False
        self.usage = Usage()
        self.handlers: dict[str, _Handler] = {
            "response.created": self._on_response,
            "response.in_progress": self._on_response,
            "response.output_text.delta": self._on_text,
            "response.refusal.delta": self._on_text,
            "response.reasoning_summary_text.delta": self._on_reasoning,
            "response.reasoning_text.delta": self._on_reasoning,
            "response.reasoning_summary_part.added": self._on_summary_part,
            "response.completed": self._on_completed,
            "response.incomplete": self._on_incomplete,
            "response.failed": self._on_failed,
            "error": self._on_error,
        }

    def feed(self, event: Any) -> list[StreamEvent]:
        handler = self.handlers.get(str(getattr(event, "type", "")))
        return handler(event) if handler is not None else []

    def finished(self) -> Finished | None:
        if not self.done:
            return None
        return Finished(self.usage, self.response_id, self.finish_reason)

    # handlers ---------------------------------------------------------------

    def _on_response(self, event: Any) -> list[StreamEvent]:
        self.response_id = getattr(getattr(event, "response", None), "id", None) or (
            self.response_id
        )
        return []

    def _on_text(self, event: Any) -> list[StreamEvent]:
        delta = getattr(event, "delta", None)
        return [TextDelta(delta)] if isinstance(delta, str) and delta else []

    def _on_reasoning(self, event: Any) -> list[StreamEvent]:
        delta = getattr(event, "delta", None)
        return [ReasoningDelta(delta)] if isinstance(delta, str) and delta else []

    def _on_summary_part(self, event: Any) -> list[StreamEvent]:
        # summaries come in parts; a blank line between them, as ChatGPT shows them
        index = getattr(event, "summary_index", 0)
        return [ReasoningDelta("\n\n")] if isinstance(index, int) and index > 0 else []

    def _on_completed(self, event: Any) -> list[StreamEvent]:
        self._finish(event, self.completed_reason)
        return []

    def _on_incomplete(self, event: Any) -> list[StreamEvent]:
        details = getattr(getattr(event, "response", None), "incomplete_details", None)
        reason = getattr(details, "reason", None)
        self._finish(event, reason if isinstance(reason, str) and reason else "incomplete")
        return []

    def _on_failed(self, event: Any) -> list[StreamEvent]:
        error = getattr(getattr(event, "response", None), "error", None)
        raise ChatTurnError(
            classify_stream_event(
                self.provider,
                getattr(error, "code", None),
                getattr(error, "message", None) or "response.failed",
                getattr(error, "type", None),
            )
        )

    def _on_error(self, event: Any) -> list[StreamEvent]:
        raise ChatTurnError(
            classify_stream_event(
                self.provider, getattr(event, "code", None), getattr(event, "message", None)
            )
        )

    def _finish(self, event: Any, reason: str) -> None:
        response = getattr(event, "response", None)
        self._on_response(event)
        self.finish_reason = reason
        self.done = True
        u = getattr(response, "usage", None)
        if u is None:
            return  # no usage: stream_turn estimates it
        input_details = getattr(u, "input_tokens_details", None)
        cached = count_attr(input_details, "cached_tokens")
        prompt = count_attr(u, "input_tokens")
        self.usage = Usage(
            input_tokens=None if prompt is None else max(0, prompt - (cached or 0)),
            output_tokens=count_attr(u, "output_tokens"),
            reasoning_tokens=count_attr(
                getattr(u, "output_tokens_details", None), "reasoning_tokens"
            ),
            cache_read_tokens=cached,
            cache_write_tokens=count_attr(input_details, "cache_write_tokens"),
        )


def to_responses_input(messages: Iterable[PromptMessage]) -> list[dict[str, Any]]:
    """chatd messages -> Responses `input` messages, mapped as for Chat
    Completions (`to_openai_messages`: reasoning dropped, tool parts as text,
    images for user messages) with the Responses part types."""
    out: list[dict[str, Any]] = []
    for message in to_openai_messages(messages):
        content = message["content"]
        if isinstance(content, list):
            content = [
                {"type": "input_image", "image_url": part["image_url"]["url"]}
                if part["type"] == "image_url"
                else {"type": "input_text", "text": part["text"]}
                for part in content
            ]
        out.append({"role": message["role"], "content": content})
    return out


def prepare(
    cache: ClientCache,
    spec: ModelSpec,
    key: str,
    messages: Sequence[PromptMessage],
    read_timeout: float,
) -> tuple[ResponsesTranslator, Callable[[], Awaitable[Any]]]:
    """The translator and the request of one streamed turn.

    chatd keeps the history, so it sends the whole conversation with
    `store: false`. It asks for reasoning summaries (`reasoning.summary:
    auto`); a model or server that refuses them with a 400 naming `reasoning`
    gets the request once more without, and never again from this worker
    (per server and model)."""
    translator = ResponsesTranslator(spec.provider_name)
    client_o = cache.openai(spec, key)
    conversation = to_responses_input(messages)
    headers = auth_headers(spec.auth_header or "bearer", key, openai.omit)
    model = (spec.base_url, spec.provider_name, spec.model)

    async def create(summary: bool) -> Any:
        return await client_o.responses.create(
            model=spec.model,
            input=cast(Any, conversation),
            stream=True,
            store=False,
            max_output_tokens=spec.max_output_tokens,
            reasoning={"summary": "auto"} if summary else openai.omit,
            timeout=cache.timeout(openai, read_timeout),
            extra_headers=headers,
        )

    async def open_stream() -> Any:
        if model in cache.no_reasoning_summary:
            return await create(False)
        try:
            return await create(True)
        except openai.BadRequestError as exc:
            if "reasoning" not in str(exc).lower():
                raise
        cache.no_reasoning_summary.add(model)
        return await create(False)

    return translator, open_stream
