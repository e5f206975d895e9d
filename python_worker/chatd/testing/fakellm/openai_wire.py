"""The OpenAI Chat Completions wire: streamed chunks (and the final usage
chunk, `data: [DONE]`) or one whole completion."""

from __future__ import annotations

import time
from typing import Any

from chatd.testing.fakellm.frames import Totals, error_object, sse


class OpenAIWire:
    """Chat Completions chunk frames."""

    def __init__(self, rid: str, model: str, include_usage: bool) -> None:
        self.rid, self.model, self.include_usage = rid, model, include_usage
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse(
            None,
            {
                "id": self.rid,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            },
        )

    def start(self) -> list[bytes]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def reasoning(self, piece: str) -> list[bytes]:
        return [self._chunk({"reasoning_content": piece})]

    def text(self, piece: str) -> list[bytes]:
        return [self._chunk({"content": piece})]

    def tool_call(self, index: int, call_id: str, name: str, arguments: list[str]) -> list[bytes]:
        """One tool call: its id and name first, then its arguments in pieces."""
        head = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        frames = [self._chunk({"tool_calls": [head]})]
        frames += [self._chunk({"tool_calls": [{"index": index, "function": {"arguments": a}}]}) for a in arguments]
        return frames

    def error(self, error_type: str, message: str | None) -> list[bytes]:
        return [sse(None, error_object("openai", 500, error_type, message))]

    def finish(self, totals: Totals, finish_reason: str | None) -> list[bytes]:
        frames = [self._chunk({}, finish_reason or "stop")]
        if self.include_usage:
            frames.append(
                sse(
                    None,
                    {
                        "id": self.rid,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": totals.openai(),
                    },
                )
            )
        frames.append(b"data: [DONE]\n\n")
        return frames

    def whole(self, text: str, reasoning: str, totals: Totals, finish: str | None) -> Any:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if reasoning:
            message["reasoning_content"] = reasoning
        return {
            "id": self.rid,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish or "stop",
                    "logprobs": None,
                }
            ],
            "usage": totals.openai(),
        }
