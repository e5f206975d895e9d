"""What the client reads: the chat, its messages, the queue, streamed parts,
a snapshot and a chat list row, each parsed leniently from chatd's jsonb."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from chatd.protocol.errors import ChatError
from chatd.protocol.errors import datetime_or_none as _datetime_or_none
from chatd.protocol.errors import int_or_none as _int_or_none
from chatd.protocol.errors import uuid_or_none as _uuid_or_none

__all__ = [
    "ChatError", "ChatInfo", "ChatSummary", "ChildChat", "Message", "QueuedMessage", "Snapshot", "StreamParts",
]


@dataclass(frozen=True)
class ChatInfo:
    """The chat row as the snapshot reports it."""

    id: UUID
    status: str
    version: int
    archived: bool = False
    title: str = ""
    lease: int = 0
    worker_id: str | None = None
    attempt: int = 0
    organization_id: UUID | None = None
    owner_id: UUID | None = None
    model_config_id: UUID | None = None
    parent_chat_id: UUID | None = None
    next_attempt_at: datetime | None = None
    retry_state: Mapping[str, Any] | None = None
    last_error: ChatError | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ChatInfo:
        retry_state = obj.get("retry_state")
        return cls(
            id=UUID(str(obj.get("id") or obj.get("chat_id"))),
            status=str(obj["status"]),
            version=int(obj["version"]),
            archived=bool(obj.get("archived", False)),
            title=str(obj.get("title") or ""),
            lease=int(obj.get("lease") or 0),
            worker_id=obj.get("worker_id"),
            attempt=int(obj.get("attempt") or 0),
            organization_id=_uuid_or_none(obj.get("organization_id")),
            owner_id=_uuid_or_none(obj.get("owner_id")),
            model_config_id=_uuid_or_none(obj.get("model_config_id")),
            parent_chat_id=_uuid_or_none(obj.get("parent_chat_id")),
            next_attempt_at=_datetime_or_none(obj.get("next_attempt_at")),
            retry_state=retry_state if isinstance(retry_state, Mapping) else None,
            last_error=ChatError.from_json(obj.get("last_error")),
            created_at=_datetime_or_none(obj.get("created_at")),
            updated_at=_datetime_or_none(obj.get("updated_at")),
            raw=obj,
        )


@dataclass(frozen=True)
class Message:
    id: int
    role: str
    content: list[dict[str, Any]]
    visibility: str = "both"
    model_config_id: UUID | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    total_cost_micros: int | None = None
    runtime_ms: int | None = None
    created_at: datetime | None = None
    # why the model step stopped: stop, length, content_filter, tool_calls,
    # other; None for non-assistant messages and interrupted turns
    finish_reason: str | None = None
    usage_estimated: bool = False  # token counts estimated by chatd, not reported

    @property
    def text(self) -> str:
        """The concatenated text parts."""
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Message:
        content = obj.get("content")
        return cls(
            id=int(obj["id"]),
            role=str(obj.get("role", "")),
            content=list(content) if isinstance(content, list) else [],
            visibility=str(obj.get("visibility") or "both"),
            model_config_id=_uuid_or_none(obj.get("model_config_id")),
            input_tokens=_int_or_none(obj.get("input_tokens")),
            output_tokens=_int_or_none(obj.get("output_tokens")),
            reasoning_tokens=_int_or_none(obj.get("reasoning_tokens")),
            cache_read_tokens=_int_or_none(obj.get("cache_read_tokens")),
            cache_write_tokens=_int_or_none(obj.get("cache_write_tokens")),
            total_cost_micros=_int_or_none(obj.get("total_cost_micros")),
            runtime_ms=_int_or_none(obj.get("runtime_ms")),
            created_at=_datetime_or_none(obj.get("created_at")),
            finish_reason=obj["finish_reason"] if isinstance(obj.get("finish_reason"), str) else None,
            usage_estimated=obj.get("usage_estimated") is True,
        )


@dataclass(frozen=True)
class QueuedMessage:
    id: int
    position: int
    content: list[dict[str, Any]]
    model_config_id: UUID | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> QueuedMessage:
        content = obj.get("content")
        return cls(
            id=int(obj["id"]),
            position=int(obj.get("position") or 0),
            content=list(content) if isinstance(content, list) else [],
            model_config_id=_uuid_or_none(obj.get("model_config_id")),
        )


@dataclass(frozen=True)
class StreamParts:
    lease: int
    seq: int
    parts: list[dict[str, Any]]

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> StreamParts:
        parts = obj.get("parts")
        return cls(int(obj["lease"]), int(obj["seq"]), list(parts) if isinstance(parts, list) else [])


@dataclass(frozen=True)
class ChildChat:
    """A sub-agent chat of a snapshot's chat (docs/agents.md):
    ``parent_tool_call_id`` is the spawn_agent call it answers (None for a
    child the application created); ``error_kind`` the kind of its
    last_error."""

    id: UUID
    status: str
    version: int
    title: str = ""
    archived: bool = False
    parent_tool_call_id: str | None = None
    error_kind: str | None = None
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ChildChat:
        error = obj.get("error")
        return cls(
            id=UUID(str(obj["id"])),
            status=str(obj["status"]),
            version=int(obj.get("version") or 0),
            title=str(obj.get("title") or ""),
            archived=bool(obj.get("archived", False)),
            parent_tool_call_id=obj.get("parent_tool_call_id"),
            error_kind=str(error["kind"]) if isinstance(error, Mapping) and error.get("kind") else None,
            created_at=_datetime_or_none(obj.get("created_at")),
        )


@dataclass(frozen=True)
class Snapshot:
    """``chatd.get_chat_snapshot``: the chat, messages after the given id,
    the queue, its sub-agent chats (``children``, newest 100) and the stream
    parts of the running turn."""

    chat: ChatInfo
    messages: list[Message]
    queue: list[QueuedMessage]
    parts: list[StreamParts]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    children: list[ChildChat] = field(default_factory=list)
    #: a newest-page snapshot's cursor to older messages (None: none older)
    before: int | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Snapshot:
        chat = obj.get("chat")
        lease = obj.get("parts_lease")
        parts = [
            {"lease": lease, **p} if lease is not None and "lease" not in p else p
            for p in obj.get("parts") or []
            if isinstance(p, Mapping)
        ]
        return cls(
            chat=ChatInfo.from_json(chat if isinstance(chat, Mapping) else obj),
            messages=sorted(
                (Message.from_json(m) for m in obj.get("messages") or []), key=lambda m: m.id
            ),
            queue=sorted(
                (QueuedMessage.from_json(q) for q in obj.get("queue") or obj.get("queued_messages") or []),
                key=lambda q: (q.position, q.id),
            ),
            parts=sorted(
                (StreamParts.from_json(p) for p in parts if p.get("lease") is not None),
                key=lambda p: (p.lease, p.seq),
            ),
            raw=obj,
            children=[ChildChat.from_json(c) for c in obj.get("children") or [] if isinstance(c, Mapping)],
            before=_int_or_none(obj.get("before")),
        )


@dataclass(frozen=True)
class MessagePage:
    """``chatd.get_messages_before``: one page of a chat's messages going
    back in time, oldest first within the page; ``before`` is the cursor for
    the next older page (None when ``more`` is false)."""

    messages: list[Message]
    more: bool
    before: int | None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> MessagePage:
        before = obj.get("before")
        return cls(
            messages=sorted((Message.from_json(m) for m in obj.get("messages") or []), key=lambda m: m.id),
            more=bool(obj.get("more")),
            before=int(before) if isinstance(before, int) else None,
        )


@dataclass(frozen=True)
class ChatSummary:
    """One row of ``chatd.list_chats``."""

    id: UUID
    title: str
    status: str
    archived: bool
    organization_id: UUID | None
    updated_at: datetime | None
    version: int = 0
    parent_chat_id: UUID | None = None
    model_config_id: UUID | None = None
    last_error: ChatError | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ChatSummary:
        return cls(
            id=UUID(str(obj.get("id") or obj.get("chat_id"))),
            title=str(obj.get("title") or ""),
            status=str(obj.get("status", "")),
            archived=bool(obj.get("archived", False)),
            organization_id=_uuid_or_none(obj.get("organization_id")),
            updated_at=_datetime_or_none(obj.get("updated_at")),
            version=int(obj.get("version") or 0),
            parent_chat_id=_uuid_or_none(obj.get("parent_chat_id")),
            model_config_id=_uuid_or_none(obj.get("model_config_id")),
            last_error=ChatError.from_json(obj.get("last_error")),
            raw=obj,
        )
