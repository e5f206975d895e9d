"""One chat's subscription: LISTEN first, then a snapshot, then only what
is newer (see chatd.client's module doc); how it resumes after a reconnect."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeAlias
from uuid import UUID

import psycopg

from chatd.client.events import (
    ChatDeletedEvent,
    ChildrenEvent,
    ErrorEvent,
    Event,
    MessageEvent,
    MessagesDeletedEvent,
    PartsEvent,
    QueueEvent,
    RetryEvent,
    StatusEvent,
    TitleEvent,
    ToolCallsEvent,
)
from chatd.client.models import ChatInfo, Snapshot
from chatd.protocol.errors import ChatNotFound, Forbidden
from chatd.protocol.errors import datetime_or_none as _datetime_or_none
from chatd.protocol.errors import int_or_none as _int_or_none

if TYPE_CHECKING:
    from chatd.client.client import Client

__all__ = ["Subscription"]

log = logging.getLogger("chatd.client")


class _Resync:
    """Queue marker: the listener reconnected; re-read everything."""


class _Closed:
    """Queue marker: the client is closing."""


class _Retry:
    """Internal marker: a stale subscription's retry timer fired; re-read."""


_RESYNC: Final = _Resync()
_CLOSED: Final = _Closed()
_RETRY: Final = _Retry()

#: Longest wait between two re-reads of a stale subscription.
RETRY_CAP: Final = 5.0

_Item: TypeAlias = Mapping[str, Any] | _Resync | _Closed | _Retry

_TRANSIENT: Final = (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError)


class Subscription:
    """Events of one chat; see `Client.subscribe` and the module doc."""

    def __init__(
        self, client: Client, user_id: UUID, chat_id: UUID, after_message_id: int | None,
        *, newest: int | None = None,
    ) -> None:
        self._client = client
        self.user_id = user_id
        self.chat_id = chat_id
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._armed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._generation = -1
        self._gen: AsyncIterator[Event] | None = None
        # what has been emitted
        self.last_message_id = after_message_id or 0
        self.last_version = 0
        #: the newest version a notification named: a snapshot older than
        #: it (a lagging read replica's) is never applied
        self.seen_version = 0
        self.last_parts: tuple[int, int] = (0, -1)
        self.chat: ChatInfo | None = None
        self._queue_ids: list[int] | None = None
        self._children: list[tuple[UUID, str, bool, str]] = []
        self._stale = False
        self._base_version = 0
        self._after = after_message_id or 0
        self._emitted: list[int] = []  # ids of the live messages emitted
        self._calls: dict[str, dict[str, Any]] = {}  # tool calls of the last step without a result
        self._full = False
        self._newest = newest
        #: with ``newest``: the id to pass to `Client.messages_before` for the
        #: messages older than the first page (None: there are none)
        self.before: int | None = None
        self.refresh_failures = 0  # every failed re-read (a counter)
        self._failures = 0  # failed re-reads in a row (the retry backoff)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._gen is None:
            self._gen = self._run()
        return await self._gen.__anext__()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._client._hub.unregister(self)
        gen, self._gen = self._gen, None
        if gen is not None:
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                await aclose()

    # ------------------------------------------------------------------ internals

    async def _run(self) -> AsyncIterator[Event]:
        client = self._client
        try:
            snapshot = await self._subscribe()
            if snapshot is None:
                return  # the client closed before the first read succeeded
            if self._newest is not None and snapshot.messages:
                # a full re-read (after an edit) starts where the first page did
                self._after = max(self._after, snapshot.messages[0].id - 1)
                self.before = snapshot.before
            self._base_version = snapshot.chat.version
            for event in self._apply(snapshot):
                yield event
            while True:
                # Everything already delivered, as one batch: the
                # notifications of one transaction arrive together.
                batch = [await self._next()]
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                if any(self._is_edit(item) for item in batch):
                    self._full = True  # messages changed: re-read them all
                for item in batch:
                    if isinstance(item, _Closed):
                        return
                    events = (
                        await self._refresh() if isinstance(item, (_Resync, _Retry))
                        else await self._on_hint(item)
                    )
                    for event in events:
                        yield event
                        if isinstance(event, ChatDeletedEvent):
                            return
        finally:
            client._hub.unregister(self)

    async def _subscribe(self) -> Snapshot | None:
        """LISTEN, then the first snapshot. A transient failure (the
        database unreachable or failing over, a timeout) is retried with the
        re-read backoff until it succeeds, as a refresh is: a subscription
        that starts during an outage waits it out instead of failing.
        ChatNotFound, Forbidden and other chatd errors end it; None when the
        client closed meanwhile."""
        client, listened = self._client, False
        while True:
            try:
                await client._hub.register(self)
                if not listened and client.after_listen is not None:
                    await client.after_listen(self.chat_id)
                listened = True
                snapshot = await client.snapshot(
                    self.user_id, self.chat_id, self.last_message_id, newest=self._newest
                )
            except (*_TRANSIENT, psycopg.Error) as exc:
                self._failed("the first read", exc)
                # the stale subscription's wait: its backoff, or a hint
                # (which the snapshot covers), or the client closing
                if isinstance(await self._next(), _Closed):
                    return None
                continue
            if self._failures:
                log.info("chat %s: subscribed after %d failed attempt(s)", self.chat_id, self._failures)
            self._stale, self._failures = False, 0
            return snapshot

    async def _next(self) -> _Item:
        """The next queued item; while the subscription is stale (a re-read
        failed), a retry after a capped backoff if nothing comes first, so a
        final message is never missed for want of another notification."""
        poll = self._client.poll_interval
        if not self._stale and poll is None:
            return await self._queue.get()
        delay = min(0.1 * 2 ** max(self._failures - 1, 0), RETRY_CAP) if self._stale else 0.0
        if poll is not None:  # polling mode: a re-read at least every poll interval
            delay = max(delay, poll)
        try:
            async with asyncio.timeout(delay):
                return await self._queue.get()
        except TimeoutError:
            return _RETRY

    def _failed(self, what: str, exc: BaseException) -> None:
        self._stale = True
        self.refresh_failures += 1
        self._failures += 1
        if self._failures == 1:  # one line per outage, not per retry
            log.warning("chat %s: %s failed, retrying until it succeeds: %s",
                        self.chat_id, what, str(exc).strip() or repr(exc))

    async def _on_hint(self, hint: Mapping[str, Any]) -> list[Event]:
        kind = hint.get("kind")
        if kind == "parts":
            return await self._on_parts(hint)
        version = _int_or_none(hint.get("version")) or 0
        self.seen_version = max(self.seen_version, version)
        if kind in ("deleted", "child"):
            # a hint like any other (anyone can NOTIFY it): the chat is gone,
            # or a sub-agent changed, only if the authorized re-read says so
            # (a child hint carries no version of this chat)
            return await self._refresh()
        if version <= self.last_version and not self._stale and not self._full:
            # already reflected in what was emitted; an edit hint (_full) is
            # not: the message notifications of a transaction come at its
            # commit, after the status one of the same version
            return []
        return await self._refresh()

    def _is_edit(self, item: _Item) -> bool:
        """A hint that existing messages changed (soft-deleted by edit_message)."""
        if isinstance(item, _Resync):
            return True
        if not isinstance(item, Mapping) or item.get("kind") != "message":
            return False
        version = _int_or_none(item.get("version")) or 0
        return version > self._base_version and (
            item.get("op") == "update" or item.get("deleted_from") is not None
        )

    async def _on_parts(self, hint: Mapping[str, Any]) -> list[Event]:
        """A parts notification is a hint that a batch exists, never data:
        any login can NOTIFY on this channel. Read the batches after the last
        one emitted through the authorized function; a forged hint costs one
        read that returns only what the database holds."""
        lease = _int_or_none(hint.get("lease"))
        seq = _int_or_none(hint.get("seq"))
        if lease is None or seq is None or (lease, seq) <= self.last_parts:
            return []
        chat = self.chat
        if chat is not None and (chat.lease > lease or (chat.lease == lease and chat.status != "running")):
            return []  # that turn has ended; its final message is (or will be) emitted
        if self._stale or chat is None or chat.lease != lease:
            # the chat row is behind (or a refresh failed): re-read it all
            return await self._refresh()
        after = self.last_parts[1] if lease == self.last_parts[0] else -1
        try:
            batches = await self._client.stream_parts(self.user_id, self.chat_id, lease, after)
        except ChatNotFound:
            return [ChatDeletedEvent(self.chat_id)]  # it existed at the snapshot: deleted since
        except Forbidden:
            raise
        except (*_TRANSIENT, psycopg.Error) as exc:
            self._failed("reading parts", exc)
            return []
        events: list[Event] = []
        for batch in batches:
            if (batch.lease, batch.seq) > self.last_parts:
                events.append(PartsEvent(self.chat_id, batch.lease, batch.seq, batch.parts))
                self.last_parts = (batch.lease, batch.seq)
        return events

    async def _refresh(self) -> list[Event]:
        full = self._full
        try:
            snapshot = await self._client.snapshot(
                self.user_id, self.chat_id, self._after if full else self.last_message_id,
                min_version=self.seen_version,
            )
        except ChatNotFound:
            return [ChatDeletedEvent(self.chat_id)]  # it existed at the snapshot: deleted since
        except Forbidden:
            raise
        except (*_TRANSIENT, psycopg.Error) as exc:
            # Keep the subscription: the retry timer, a hint or a reconnect re-reads.
            self._failed("refresh", exc)
            return []
        if self._failures:
            log.info("chat %s: refreshed after %d failed attempt(s)", self.chat_id, self._failures)
        self._stale = False
        self._failures = 0
        events: list[Event] = []
        if full:
            self._full = False
            live = {m.id for m in snapshot.messages}
            gone = [i for i in self._emitted if i not in live]
            if gone:
                self._emitted = [i for i in self._emitted if i in live]
                events.append(
                    MessagesDeletedEvent(self.chat_id, min(gone), snapshot.chat.version, gone)
                )
        return events + self._apply(snapshot)

    def _track_calls(self, role: str, content: list[dict[str, Any]]) -> None:
        if role == "user":
            self._calls = {}
        elif role == "assistant" and any(p.get("type") == "tool-call" for p in content):
            self._calls = {str(p["tool_call_id"]): p for p in content if p.get("type") == "tool-call"}
        elif role == "tool":
            for part in content:
                self._calls.pop(str(part.get("tool_call_id")), None)

    def _apply(self, snapshot: Snapshot) -> list[Event]:
        """Events for everything in the snapshot not emitted yet."""
        events: list[Event] = []
        chat, prev = snapshot.chat, self.chat
        for message in snapshot.messages:
            if message.id > self.last_message_id:
                events.append(MessageEvent(self.chat_id, message))
                self.last_message_id = message.id
                self._emitted.append(message.id)
                self._track_calls(message.role, message.content)
        if prev is None or chat.version > prev.version:
            if prev is None or (chat.status, chat.archived) != (prev.status, prev.archived):
                events.append(StatusEvent(
                    self.chat_id, chat.status, chat.version, chat.archived, chat.lease, chat.worker_id,
                ))
            if chat.status == "requires_action" and (prev is None or prev.status != "requires_action"):
                calls = [c for c in self._calls.values() if c.get("source", "client") == "client"]
                events.append(ToolCallsEvent(self.chat_id, chat.version, calls))
            if prev is not None and chat.title != prev.title:
                events.append(TitleEvent(self.chat_id, chat.version, chat.title))
            if chat.status == "error" and (prev is None or prev.status != "error"):
                if prev is not None:  # the initial StatusEvent carries an existing error
                    events.append(ErrorEvent(self.chat_id, chat.version, chat.last_error))
            elif (
                prev is not None
                and chat.status == "pending"
                and chat.attempt > prev.attempt
                and chat.retry_state is not None
            ):
                retry = chat.retry_state
                events.append(RetryEvent(
                    self.chat_id, chat.version, chat.attempt, _int_or_none(retry.get("delay_ms")),
                    _datetime_or_none(retry.get("retrying_at")) or chat.next_attempt_at,
                    chat.last_error,
                ))
            queue_ids = [q.id for q in snapshot.queue]
            if queue_ids != self._queue_ids and (self._queue_ids is not None or queue_ids):
                events.append(QueueEvent(self.chat_id, chat.version, list(snapshot.queue)))
            self._queue_ids = queue_ids
            self.chat = chat
            self.last_version = chat.version
        children = [(c.id, c.status, c.archived, c.title) for c in snapshot.children]
        if children != self._children and (self._children or children):
            events.append(ChildrenEvent(self.chat_id, list(snapshot.children)))
        self._children = children
        if self.chat is not None and self.chat.status == "running":
            lease = self.chat.lease
            for part in snapshot.parts:
                if part.lease == lease and (part.lease, part.seq) > self.last_parts:
                    events.append(PartsEvent(self.chat_id, part.lease, part.seq, part.parts))
                    self.last_parts = (part.lease, part.seq)
        return events
