"""`Client`: the application functions, one SQL call each, over a pool, and
the one shared listener connection of its subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias
from uuid import UUID

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from chatd.client.models import ChatSummary, Snapshot, StreamParts
from chatd.client.parts import PartsReader
from chatd.client.subscription import _CLOSED, _RESYNC, Subscription
from chatd.listener import Listener
from chatd.protocol import names, queries
from chatd.protocol.errors import ChatNotFound, error_from_psycopg
from chatd.protocol.errors import int_or_none as _int_or_none
from chatd.protocol.names import chat_channel

__all__ = ["DEFAULT_TIMEOUT", "Client", "Content"]

log = logging.getLogger("chatd.client")

#: Seconds a database call may take when the caller gives no timeout.
DEFAULT_TIMEOUT: Final = 5.0

Content: TypeAlias = str | Sequence[Mapping[str, Any]]


def _content_json(content: Content) -> Jsonb:
    return Jsonb(content if isinstance(content, str) else [dict(p) for p in content])


def _tools_json(tools: Sequence[Mapping[str, Any]] | None) -> Jsonb | None:
    return None if tools is None else Jsonb([dict(t) for t in tools])


class Client:
    """A chatd client: a pool for calls, one shared listener for subscriptions."""

    def __init__(
        self,
        dsn: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        min_size: int = 1,
        max_size: int = 10,
        application_name: str = "chatd-client",
        listen_poll: float = 0.1,
        poll_interval: float | None = None,
    ) -> None:
        """``poll_interval``: no LISTEN and no server-side prepared statements
        (for PgBouncer in transaction mode); each subscription re-reads its
        chat every ``poll_interval`` seconds instead of waiting for hints."""
        if poll_interval is not None and poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.dsn = dsn
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.application_name = application_name
        self.listen_poll = listen_poll
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs={
                "autocommit": True, "application_name": application_name,
                **({"prepare_threshold": None} if poll_interval is not None else {}),
            },
            open=False,
            # a connection handed out is checked first: after a server
            # restart the pool replaces dead ones instead of failing calls
            check=AsyncConnectionPool.check_connection,
        )
        self._subs: dict[str, set[Subscription]] = {}
        self._parts_reader = PartsReader(self)
        self._listener = Listener(
            dsn,
            application_name=f"{application_name} listener",
            on_notify=self._dispatch,
            on_listening=self._on_listening,
            poll_interval=listen_poll,
            command_timeout=timeout,
        )
        self._listener_task: asyncio.Task[None] | None = None
        self._closed = False
        #: Test hook: awaited by every subscription after its LISTEN is armed
        #: and before its snapshot is read.
        self.after_listen: Callable[[UUID], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(cls, dsn: str, **kwargs: Any) -> Client:
        client = cls(dsn, **kwargs)
        await client.open()
        return client

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=max(self.timeout, 10.0))

    async def close(self) -> None:
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub._queue.put_nowait(_CLOSED)
        if self._listener_task is not None:
            self._listener.stop()
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener_task
            self._listener_task = None
        await self._pool.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def pool(self) -> AsyncConnectionPool:
        return self._pool

    @property
    def listener_pid(self) -> int | None:
        """Backend pid of the listener connection (None when not connected)."""
        return self._listener.backend_pid

    # ------------------------------------------------------------------ calls

    async def fetch(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
        db_timeout: float | None = None,
    ) -> list[TupleRow]:
        """Run one statement on a pooled connection under a deadline; chatd
        errors (SQLSTATE class CD) are raised as ChatdError subclasses."""
        try:
            async with asyncio.timeout(db_timeout if db_timeout is not None else self.timeout):
                async with self._pool.connection() as conn:
                    cursor = await conn.execute(query, params)
                    return await cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            typed = error_from_psycopg(exc)
            if typed is not None:
                raise typed from exc
            raise

    async def _scalar(
        self, query: str, params: Sequence[Any], db_timeout: float | None
    ) -> Any:
        rows = await self.fetch(query, params, db_timeout=db_timeout)
        return rows[0][0] if rows else None

    async def create_chat(
        self, user_id: UUID, organization_id: UUID, content: Content, *,
        model_config_id: UUID | None = None,
        title: str | None = None,
        system_prompt: str | None = None,
        workspace_id: UUID | None = None,
        parent_chat_id: UUID | None = None,
        client_type: Literal["ui", "api"] | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        mcp_servers: Sequence[str] | None = None,
        db_timeout: float | None = None,
    ) -> UUID:
        """Create a chat with its first user message; it starts ``pending``.
        ``tools``: client tool definitions ``{name, description, input_schema}``
        the application answers (docs/tools.md); ``mcp_servers``: names of
        registered MCP servers this chat may use."""
        value = await self._scalar(
            queries.CREATE_CHAT,
            [user_id, organization_id, _content_json(content), model_config_id, title,
             system_prompt, workspace_id, parent_chat_id, client_type,
             _tools_json(tools), None if mcp_servers is None else list(mcp_servers)],
            db_timeout,
        )
        return UUID(str(value))

    async def send_message(
        self, user_id: UUID, chat_id: UUID, content: Content, *,
        busy_behavior: Literal["queue", "interrupt"] = "queue",
        model_config_id: UUID | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        db_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send a message: runs at once when the chat is idle, else queued
        (``busy_behavior="interrupt"`` also interrupts the running turn).
        ``tools``, when given, replaces the chat's client tool definitions."""
        value = await self._scalar(
            queries.SEND_MESSAGE,
            [user_id, chat_id, _content_json(content), busy_behavior, model_config_id, _tools_json(tools)],
            db_timeout,
        )
        return dict(value) if isinstance(value, Mapping) else {"result": value}

    async def submit_tool_results(
        self, user_id: UUID, chat_id: UUID, results: Sequence[Mapping[str, Any]], *,
        db_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Answer client tool calls (``[{tool_call_id, output, is_error}]``) of a
        chat in requires_action; ToolCallNotPending (CD009) for a call not
        pending. Returns ``{message_id, status, pending, version}``."""
        value = await self._scalar(
            queries.SUBMIT_TOOL_RESULTS, [user_id, chat_id, Jsonb([dict(r) for r in results])], db_timeout
        )
        return dict(value) if isinstance(value, Mapping) else {"result": value}

    async def interrupt(self, user_id: UUID, chat_id: UUID, *, db_timeout: float | None = None) -> Any:
        return await self._scalar(queries.INTERRUPT_CHAT, [user_id, chat_id], db_timeout)

    async def edit_message(
        self,
        user_id: UUID,
        chat_id: UUID,
        message_id: int,
        content: Content,
        *,
        model_config_id: UUID | None = None,
        db_timeout: float | None = None,
    ) -> Any:
        """Replace a user message: it and everything after it are soft-deleted
        and the chat runs again from the new message."""
        return await self._scalar(
            queries.EDIT_MESSAGE,
            [user_id, chat_id, message_id, _content_json(content), model_config_id],
            db_timeout,
        )

    async def archive(self, user_id: UUID, chat_id: UUID, *, db_timeout: float | None = None) -> Any:
        return await self._scalar(queries.ARCHIVE_CHAT, [user_id, chat_id], db_timeout)

    async def unarchive(self, user_id: UUID, chat_id: UUID, *, db_timeout: float | None = None) -> Any:
        return await self._scalar(queries.UNARCHIVE_CHAT, [user_id, chat_id], db_timeout)

    async def delete_chat(self, user_id: UUID, chat_id: UUID, *, db_timeout: float | None = None) -> int:
        """Delete the chat and its sub-agent chats (``chatd.delete_chat``);
        returns how many were deleted. Their content is wiped, their spend
        stays counted; afterwards every call on them raises ``ChatNotFound``
        and their subscriptions end with ``ChatDeletedEvent``."""
        return int(await self._scalar(queries.DELETE_CHAT, [user_id, chat_id], db_timeout))

    async def list_chats(
        self,
        user_id: UUID,
        organization_id: UUID | None = None,
        *,
        include_archived: bool = False,
        limit: int = 50,
        before: datetime | None = None,
        before_id: UUID | None = None,
        db_timeout: float | None = None,
    ) -> list[ChatSummary]:
        """The user's chats, most recently updated first (then by id). To page,
        pass the last row's ``updated_at`` as ``before`` and its ``id`` as
        ``before_id``: chats sharing an ``updated_at`` are never skipped
        (``before`` alone means ``updated_at < before``)."""
        rows = await self.fetch(
            queries.LIST_CHATS,
            [user_id, organization_id, include_archived, limit, before, before_id],
            db_timeout=db_timeout,
        )
        return [ChatSummary.from_json(row) for (row,) in rows if isinstance(row, Mapping)]

    async def snapshot(
        self, user_id: UUID, chat_id: UUID, after_message_id: int = 0, *,
        db_timeout: float | None = None,
    ) -> Snapshot:
        """``chatd.get_chat_snapshot``: the chat, its messages after
        ``after_message_id``, the queue and the running turn's stream parts.

        The function returns bounded pages; this reads pages until none
        remain (messages after the last one read, then the remaining stream
        parts through ``chatd.get_stream_parts``). The chat, queue and parts
        are those of the last page, so they are at least as new as every
        message returned."""
        messages: list[Any] = []
        after = after_message_id
        while True:
            value = await self._scalar(
                queries.GET_CHAT_SNAPSHOT,
                [user_id, chat_id, after],
                db_timeout,
            )
            if not isinstance(value, Mapping):
                raise ChatNotFound(f"chat {chat_id} not found", sqlstate=names.CHAT_NOT_FOUND)
            page = value.get("messages") or []
            messages.extend(page)
            ids = [m["id"] for m in page if isinstance(m, Mapping) and isinstance(m.get("id"), int)]
            if not value.get("messages_more") or not ids:
                break
            after = max(ids)
        obj = {**value, "messages": messages}
        lease = _int_or_none(value.get("parts_lease"))
        if value.get("parts_more") and lease is not None:
            parts = [p for p in value.get("parts") or [] if isinstance(p, Mapping)]
            seqs = [s for p in parts if (s := _int_or_none(p.get("seq"))) is not None]
            more = await self.stream_parts(
                user_id, chat_id, lease, max(seqs, default=-1), db_timeout=db_timeout
            )
            obj["parts"] = parts + [{"seq": p.seq, "parts": p.parts} for p in more]
        return Snapshot.from_json(obj)

    async def stream_parts(
        self, user_id: UUID, chat_id: UUID, lease: int, after_seq: int = -1, *,
        db_timeout: float | None = None,
    ) -> list[StreamParts]:
        """``chatd.get_stream_parts``: every stored part batch of turn
        ``lease`` with a seq greater than ``after_seq``, in order. The
        authorized way to read a stream: notifications only say that a batch
        exists. Concurrent calls (every subscription of this client) share
        one round trip per user while a read is in flight."""
        out: list[StreamParts] = []
        while True:
            page, complete = await self._parts_reader.read(user_id, chat_id, lease, after_seq, db_timeout)
            out.extend(page)
            if complete or not page:
                return out
            after_seq = page[-1].seq

    # ------------------------------------------------------------------ subscriptions

    def subscribe(
        self, user_id: UUID, chat_id: UUID, after_message_id: int | None = None
    ) -> Subscription:
        """Follow one chat: an async iterator of events (see the module doc).

        With ``after_message_id`` only messages with a greater id are emitted;
        without it the whole visible history is. Use it as an async context
        manager (or call ``aclose()``) to stop listening.
        """
        if self._closed:
            raise RuntimeError("client is closed")
        return Subscription(self, user_id, chat_id, after_message_id)

    def _ensure_listener(self) -> None:
        if self._listener_task is None or self._listener_task.done():
            self._listener_task = asyncio.create_task(
                self._listener.run(), name="chatd-client listener"
            )

    async def _register(self, sub: Subscription) -> None:
        channel = chat_channel(sub.chat_id)
        self._subs.setdefault(channel, set()).add(sub)
        if self.poll_interval is not None:  # polling: nothing to arm
            if not sub._armed.done():
                sub._armed.set_result(None)
            return
        self._ensure_listener()
        self._listener.listen(channel)
        async with asyncio.timeout(self.timeout):
            await asyncio.shield(sub._armed)

    def _unregister(self, sub: Subscription) -> None:
        channel = chat_channel(sub.chat_id)
        subs = self._subs.get(channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[channel]
                self._listener.unlisten(channel)

    async def _on_listening(self, listening: frozenset[str], generation: int) -> None:
        """Arm new subscriptions; tell the others to re-read after a
        reconnect, since notifications sent while deaf are lost."""
        for channel in listening:
            for sub in list(self._subs.get(channel, ())):
                if not sub._armed.done():
                    sub._generation = generation
                    sub._armed.set_result(None)
                elif sub._generation != generation:
                    sub._generation = generation
                    sub._queue.put_nowait(_RESYNC)

    def _dispatch(self, channel: str, payload: str) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        try:
            hint = json.loads(payload)
        except ValueError:
            log.warning("ignoring a malformed notification on %s", channel)
            return
        if not isinstance(hint, dict):
            return
        for sub in subs:
            sub._queue.put_nowait(hint)
