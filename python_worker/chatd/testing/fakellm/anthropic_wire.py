"""The Anthropic Messages wire: `message_start`, `content_block_*`,
`message_delta` with usage, `message_stop`; or one whole message."""

from __future__ import annotations

from typing import Any

from chatd.testing.fakellm.frames import Totals, error_object, sse


class AnthropicWire:
    """Messages stream events."""

    def __init__(self, rid: str, model: str, totals: Totals) -> None:
        self.rid, self.model, self.totals = rid, model, totals
        self.index = -1
        self.open: str | None = None  # type of the open content block

    def _block(self, kind: str) -> list[bytes]:
        frames = self._close_block()
        self.index += 1
        self.open = kind
        block = (
            {"type": "text", "text": ""}
            if kind == "text"
            else {"type": "thinking", "thinking": "", "signature": ""}
        )
        frames.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        return frames

    def _close_block(self) -> list[bytes]:
        frames: list[bytes] = []
        if self.open == "thinking":
            frames.append(self._delta({"type": "signature_delta", "signature": "fakesig"}))
        if self.open is not None:
            frames.append(
                sse("content_block_stop", {"type": "content_block_stop", "index": self.index})
            )
        self.open = None
        return frames

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def start(self) -> list[bytes]:
        return [
            sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.rid,
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": self.model,
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": self.totals.anthropic(output=1),
                    },
                },
            ),
            sse("ping", {"type": "ping"}),
        ]

    def reasoning(self, piece: str) -> list[bytes]:
        frames = self._block("thinking") if self.open != "thinking" else []
        return [*frames, self._delta({"type": "thinking_delta", "thinking": piece})]

    def text(self, piece: str) -> list[bytes]:
        frames = self._block("text") if self.open != "text" else []
        return [*frames, self._delta({"type": "text_delta", "text": piece})]

    def tool_call(self, index: int, call_id: str, name: str, arguments: list[str]) -> list[bytes]:
        """One tool_use block: id and name first, then input_json_delta pieces."""
        frames = self._close_block()
        self.index += 1
        self.open = "tool_use"
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        frames.append(sse(
            "content_block_start", {"type": "content_block_start", "index": self.index, "content_block": block}
        ))
        frames += [self._delta({"type": "input_json_delta", "partial_json": a}) for a in arguments]
        return frames

    def error(self, error_type: str, message: str | None) -> list[bytes]:
        return [sse("error", error_object("anthropic", 500, error_type, message))]

    def finish(self, totals: Totals, finish_reason: str | None) -> list[bytes]:
        return [
            *self._close_block(),
            sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": finish_reason or "end_turn", "stop_sequence": None},
                    "usage": totals.anthropic(),
                },
            ),
            sse("message_stop", {"type": "message_stop"}),
        ]

    def whole(self, text: str, reasoning: str, totals: Totals, finish: str | None) -> Any:
        content: list[dict[str, Any]] = []
        if reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": "fakesig"})
        content.append({"type": "text", "text": text})
        return {
            "id": self.rid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": finish or "end_turn",
            "stop_sequence": None,
            "usage": totals.anthropic(),
        }
