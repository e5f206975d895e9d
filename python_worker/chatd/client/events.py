"""What a subscription emits: one event class per kind of change of a chat
(docs/client.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

from chatd.client.models import ChatError, ChildChat, Message, QueuedMessage

__all__ = [
    "ChatDeletedEvent",
    "ChatEvent",
    "ChildrenEvent",
    "ErrorEvent",
    "Event",
    "MessageEvent",
    "MessagesDeletedEvent",
    "PartsEvent",
    "QueueEvent",
    "RetryEvent",
    "StatusEvent",
    "TitleEvent",
    "ToolCallsEvent",
]


@dataclass(frozen=True)
class ChatEvent:
    chat_id: UUID


@dataclass(frozen=True)
class StatusEvent(ChatEvent):
    """The chat's status or archived flag (the first event of a subscription)."""

    status: str
    version: int
    archived: bool = False
    lease: int = 0
    worker_id: str | None = None


@dataclass(frozen=True)
class MessageEvent(ChatEvent):
    """A durable message, each exactly once, in id order."""

    message: Message


@dataclass(frozen=True)
class MessagesDeletedEvent(ChatEvent):
    """Emitted messages that are gone (soft-deleted by edit_message), from
    ``from_message_id`` on; ``message_ids`` lists them."""

    from_message_id: int
    version: int
    message_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class PartsEvent(ChatEvent):
    """Streamed partial output of the running turn, in (lease, seq) order.
    A preview: the final assistant message (a MessageEvent) is authoritative."""

    lease: int
    seq: int
    parts: list[dict[str, Any]]

    @property
    def text(self) -> str:
        return "".join(str(p.get("text", "")) for p in self.parts if p.get("type") == "text")


@dataclass(frozen=True)
class QueueEvent(ChatEvent):
    """The queue of messages waiting for the running turn to end."""

    version: int
    queue: list[QueuedMessage]


@dataclass(frozen=True)
class RetryEvent(ChatEvent):
    """The turn failed and will be retried at ``retrying_at``."""

    version: int
    attempt: int
    delay_ms: int | None
    retrying_at: datetime | None
    error: ChatError | None


@dataclass(frozen=True)
class ErrorEvent(ChatEvent):
    """The turn failed for good; the chat is in status ``error``."""

    version: int
    error: ChatError | None


@dataclass(frozen=True)
class ToolCallsEvent(ChatEvent):
    """The chat is ``requires_action``: the application runs these client
    tool calls (tool-call parts: tool_call_id, tool_name, input) and answers
    with ``Client.submit_tool_results`` (docs/tools.md)."""

    version: int
    calls: list[dict[str, Any]]


@dataclass(frozen=True)
class TitleEvent(ChatEvent):
    version: int
    title: str


@dataclass(frozen=True)
class ChildrenEvent(ChatEvent):
    """The chat's sub-agent chats (docs/agents.md), each with its status:
    emitted when one is created or changes status, archived flag or title
    (and first when the subscription starts with children)."""

    children: list[ChildChat]


@dataclass(frozen=True)
class ChatDeletedEvent(ChatEvent):
    """The chat was deleted (``delete_chat``, or its row removed): a re-read
    after a hint found it gone. The subscription ends after this event."""


Event: TypeAlias = (
    StatusEvent | MessageEvent | MessagesDeletedEvent | PartsEvent | QueueEvent | RetryEvent
    | ErrorEvent | TitleEvent | ChatDeletedEvent | ToolCallsEvent | ChildrenEvent
)
