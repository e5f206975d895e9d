"""``GET /api/chats/{id}/stream``: a chat's events as Server-Sent Events.

Every event's ``id:`` is the stream's cursor after it,
``<version>.<message id>.<lease>.<seq>``: the chat version, the last
message and the last part batch delivered. A browser that reconnects with
``Last-Event-ID`` gets a new `Subscription` started from that cursor
(messages after the id, parts after (lease, seq), state changes of a newer
version): what it missed, no duplicates, then live events.

Backpressure: events wait in a buffer of ``stream_buffer`` per stream.
When a slow reader lets it fill, the subscription is dropped (nothing more
is buffered) and, once the reader has taken what was buffered, a
``resync`` event is sent and a new subscription resumes from the cursor of
the last event delivered: memory stays bounded and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from uuid import UUID

from chatd.client import (
    ChatDeletedEvent,
    ChatdError,
    ChatNotFound,
    ChildrenEvent,
    Client,
    ErrorEvent,
    Event,
    Forbidden,
    MessageEvent,
    MessagesDeletedEvent,
    PartsEvent,
    QueueEvent,
    RetryEvent,
    StatusEvent,
    TitleEvent,
    ToolCallsEvent,
)
from chatd.http.problems import Problem

__all__ = ["Cursor", "EventStream", "event_name", "to_jsonable"]

_CURSOR: Final = re.compile(r"^(\d{1,18})\.(\d{1,18})\.(\d{1,18})\.(-1|\d{1,9})$")

_NAMES: Final[dict[type, str]] = {
    StatusEvent: "status", MessageEvent: "message", MessagesDeletedEvent: "messages_deleted",
    PartsEvent: "parts", QueueEvent: "queue", RetryEvent: "retry", ErrorEvent: "error",
    TitleEvent: "title", ChatDeletedEvent: "deleted", ToolCallsEvent: "tool_calls", ChildrenEvent: "children",
}


def event_name(event: Event) -> str:
    return _NAMES[type(event)]


def to_jsonable(value: Any) -> Any:
    """Dataclasses, UUIDs and datetimes as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != "raw"}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (UUID, datetime)):
        return str(value) if isinstance(value, UUID) else value.isoformat()
    return value


@dataclass
class Cursor:
    version: int = 0
    message_id: int = 0
    lease: int = 0
    seq: int = -1

    @classmethod
    def parse(cls, value: str | None) -> Cursor:
        if not value:
            return cls()
        match = _CURSOR.match(value.strip())
        if match is None:
            raise Problem(400, "invalid-input", "Invalid input",
                          "Last-Event-ID is not an event id of this stream")
        v, m, lease, seq = (int(g) for g in match.groups())
        return cls(v, m, lease, seq)

    def __str__(self) -> str:
        return f"{self.version}.{self.message_id}.{self.lease}.{self.seq}"

    def advance(self, event: Event) -> bool:
        """Move past ``event``; False when it was already delivered (a state
        event of a version not newer than the cursor's, after a resume)."""
        if isinstance(event, MessageEvent):
            self.message_id = max(self.message_id, event.message.id)
            return True
        if isinstance(event, PartsEvent):
            self.lease, self.seq = event.lease, event.seq
            return True
        version = getattr(event, "version", None)
        if version is None:
            return True
        if version <= self.version and not isinstance(event, MessagesDeletedEvent):
            return False
        self.version = max(self.version, version)
        return True


class _Overflow:
    """Pump marker: the buffer filled; resync once it is drained."""


class _Done:
    """Pump marker: the subscription ended (the error, if any, is attached)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class EventStream:
    """One SSE response: a pump task fills a bounded buffer from a
    subscription; `frames` writes it out with keep-alive comments."""

    def __init__(
        self, client: Client, user_id: UUID, chat_id: UUID, cursor: Cursor, *,
        buffer: int, keepalive: float,
    ) -> None:
        self.client = client
        self.user_id = user_id
        self.chat_id = chat_id
        self.cursor = cursor
        self.buffer = max(1, buffer)
        self.keepalive = keepalive
        self.resyncs = 0
        self._queue: asyncio.Queue[Event | _Overflow | _Done] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    def _start(self) -> None:
        self._queue = asyncio.Queue()
        self._pump = asyncio.create_task(self._run(Cursor(**dataclasses.asdict(self.cursor))))

    async def _run(self, cursor: Cursor) -> None:
        error: BaseException | None = None
        try:
            sub = self.client.subscribe(self.user_id, self.chat_id, after_message_id=cursor.message_id)
            if cursor.lease > 0:
                sub.last_parts = (cursor.lease, cursor.seq)
            async with sub:
                async for event in sub:
                    if self._queue.qsize() >= self.buffer:
                        self._queue.put_nowait(_Overflow())  # one marker past the bound
                        return
                    self._queue.put_nowait(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = exc
        self._queue.put_nowait(_Done(error))

    async def open(self) -> None:
        """Start and wait for the first event, so a chat that does not
        exist (or is not the user's) is a 404 problem, not an empty stream."""
        self._start()
        first = await self._queue.get()
        if isinstance(first, _Done) and isinstance(first.error, ChatdError):
            raise first.error
        self._first: Event | _Overflow | _Done | None = first

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump

    def _frame(self, name: str, data: Any, with_id: bool = True) -> str:
        lines = [f"id: {self.cursor}"] if with_id else []
        lines += [f"event: {name}", f"data: {json.dumps(to_jsonable(data), separators=(',', ':'))}"]
        return "\n".join(lines) + "\n\n"

    async def frames(self) -> AsyncIterator[str]:
        """The response body. Ends after an archive, a deletion or a lost
        access (an ``end`` event says why)."""
        try:
            yield f"retry: 1000\n: chat {self.chat_id}\n\n"
            item, self._first = self._first, None
            while True:
                if item is None:
                    try:
                        async with asyncio.timeout(self.keepalive):
                            item = await self._queue.get()
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                if isinstance(item, _Overflow):
                    await self.close()
                    self.resyncs += 1
                    yield self._frame("resync", {"cursor": str(self.cursor)})
                    self._start()
                elif isinstance(item, _Done):
                    reason = "error" if item.error is not None else "closed"
                    if isinstance(item.error, (ChatNotFound, Forbidden)):
                        reason = "access"
                    yield self._frame("end", {"reason": reason})
                    return
                elif self.cursor.advance(item):
                    yield self._frame(event_name(item), item)
                    if isinstance(item, ChatDeletedEvent):
                        yield self._frame("end", {"reason": "deleted"})
                        return
                    if isinstance(item, StatusEvent) and item.archived:
                        yield self._frame("end", {"reason": "archived"})
                        return
                item = None
        finally:
            await self.close()
