"""What a worker claimed (`Claim`: one row of acquire_chats) and its
bookkeeping of a running turn (`Turn`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from chatd.llm import ModelSpec, PromptMessage

__all__ = ["SUMMARY_PREFIX", "Claim", "Turn"]

#: How a summary of the earlier conversation is introduced to the model.
SUMMARY_PREFIX = "Summary of the earlier part of this conversation (older messages are not shown):\n\n"


@dataclass
class Turn:
    chat_id: UUID
    lease: int
    task: asyncio.Task[None] | None = None
    # why the worker cancelled the task: "lost" (SQL says it is not ours any
    # more: interrupted, recovered) or "shutdown"
    cancel_reason: str | None = None
    # set once the turn writes its result (finish_turn, record_failure): the
    # notifications of that very write must not cancel it; a lost lease
    # surfaces as the write's own error
    finishing: bool = False


@dataclass
class Claim:
    chat_id: UUID
    lease: int
    attempt: int
    model: Mapping[str, Any]
    messages: Sequence[Mapping[str, Any]]
    # False: acquire_chats returned only the first page of the history
    history_complete: bool = True
    # what the turn may call (chatd._turn_tools); None: a chat without tools
    tools: Mapping[str, Any] | None = None
    # the context window (chatd._context_window): compact true when the
    # history must be summarized before the model step (docs/context.md)
    context: Mapping[str, Any] | None = None

    def spec(self) -> ModelSpec:
        provider = self.model["provider"]
        return ModelSpec(
            provider_kind=provider["kind"],
            provider_name=provider["name"],
            base_url=provider.get("base_url"),
            api_key_env=provider.get("api_key_env"),
            model=self.model["model"],
            max_output_tokens=int(self.model["max_output_tokens"]),
            auth_header=provider.get("auth_header"),
            stream_usage=provider.get("stream_usage") is not False,
            api=provider.get("api"),
            thinking_budget_tokens=self.model.get("thinking_budget_tokens"),
        )

    def prompt(self) -> list[PromptMessage]:
        """The messages as the model sees them; a summary (docs/context.md)
        is a system message that says what it is."""
        return [
            PromptMessage(m["role"], [
                {"type": "text", "text": SUMMARY_PREFIX + "".join(
                    str(p.get("text", "")) for p in m["content"] if p.get("type") == "text"
                )}
            ]) if m.get("summary") else PromptMessage(m["role"], m["content"])
            for m in self.messages
        ]
