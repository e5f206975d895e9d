"""The Anthropic Messages wire: `message_start`, `content_block_*`,
`message_delta` with usage, `message_stop`; or one whole message."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from chatd.testing.fakellm.frames import Totals, error_object, sse

#: what the fake seals thinking with; like Anthropic's, opaque to clients
_SEAL_KEY = b"chatd-fake-anthropic-thinking"


def thinking_signature(thinking: str) -> str:
    """The signature the fake gives a thinking block's text: the Messages
    API only accepts a thinking block back with the signature it issued for
    that exact text (`thinking_refusal` checks it)."""
    return "fakesig-" + hmac.new(_SEAL_KEY, thinking.encode(), hashlib.sha256).hexdigest()[:32]


class AnthropicWire:
    """Messages stream events."""

    def __init__(self, rid: str, model: str, totals: Totals) -> None:
        self.rid, self.model, self.totals = rid, model, totals
        self.index = -1
        self.open: str | None = None  # type of the open content block
        self.thinking = ""  # the open thinking block's text, for its signature

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
            frames.append(self._delta({"type": "signature_delta", "signature": thinking_signature(self.thinking)}))
            self.thinking = ""
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
        self.thinking += piece
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
            content.append({"type": "thinking", "thinking": reasoning, "signature": thinking_signature(reasoning)})
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


def thinking_refusal(body: Mapping[str, Any]) -> str | None:
    """Why the Messages API would refuse the request's `thinking`, or None:
    an enabled budget must be at least 1024 and below `max_tokens`, and the
    last assistant message, when it holds `tool_use` blocks (the turn goes on
    after a tool call), must start with the thinking blocks the API issued,
    signatures intact (`_thinking_continuity`)."""
    thinking = body.get("thinking")
    if not isinstance(thinking, Mapping) or thinking.get("type") != "enabled":
        return None
    budget, max_tokens = thinking.get("budget_tokens"), body.get("max_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if not isinstance(max_tokens, int) or max_tokens <= budget:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    return _thinking_continuity(body.get("messages"))


def _thinking_continuity(messages: Any) -> str | None:
    """The Messages API's rule for extended thinking with tools, in its own
    words: the final assistant message, if it has `tool_use`, must start with
    a `thinking` or `redacted_thinking` block, and every thinking block sent
    back must carry the signature issued for its exact text."""
    if not isinstance(messages, list):
        return None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            continue
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return None
        for n, block in enumerate(content):
            if isinstance(block, Mapping) and block.get("type") == "thinking" and block.get(
                "signature"
            ) != thinking_signature(str(block.get("thinking", ""))):
                return f"messages.{index}.content.{n}: Invalid `signature` in `thinking` block"
        has_tool_use = any(isinstance(b, Mapping) and b.get("type") == "tool_use" for b in content)
        head = content[0].get("type") if isinstance(content[0], Mapping) else None
        if has_tool_use and head not in ("thinking", "redacted_thinking"):
            return (
                f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{head}`. When `thinking` is enabled, a final `assistant` message must start with a "
                "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks)."
            )
        return None
    return None
