"""`Client`: the application functions, one SQL call each, over a pool, and
the one shared listener connection of its subscriptions."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias
from uuid import UUID

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from chatd.client.hub import Hub
from chatd.client.models import ChatSummary, MessagePage, Snapshot, StreamParts
from chatd.client.pages import snapshot_pages
from chatd.client.parts import PartsReader
from chatd.client.reads import DEFAULT_MAX_STALENESS, ReadRouter
from chatd.client.subscription import Subscription
from chatd.protocol import queries
from chatd.protocol.errors import error_from_psycopg
from chatd.protocol.errors import int_or_none as _int_or_none

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
        read_dsn: str | None = None,
        read_max_staleness: float = DEFAULT_MAX_STALENESS,
    ) -> None:
        """``poll_interval``: no LISTEN and no server-side prepared statements
        (for PgBouncer in transaction mode); each subscription re-reads its
        chat every ``poll_interval`` seconds instead of waiting for hints.
        ``read_dsn``: a read replica for snapshots, message pages and chat
        lists, used only when fresh enough (chatd.client.reads): it has
        replayed this client's writes and the primary's position of at most
        ``read_max_staleness`` seconds ago, and a snapshot is never older
        than a notification seen; otherwise the primary answers."""
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
        self._reads = None if read_dsn is None else ReadRouter(
            read_dsn, self._pool, timeout=timeout, max_staleness=read_max_staleness,
            max_size=max_size, application_name=application_name,
            prepare_threshold=poll_interval is None,
        )
        self._parts_reader = PartsReader(self)
        self._hub = Hub(
            dsn, application_name=application_name, listen_poll=listen_poll, timeout=timeout,
            poll_interval=poll_interval,
        )
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
        if self._reads is not None:
            await self._reads.open()

    async def close(self) -> None:
        self._closed = True
        await self._hub.close()
        if self._reads is not None:
            await self._reads.close()
        await self._pool.close()

    async def __aenter__(self) -> Client:
        if self._pool.closed and not self._closed:  # `async with Client(dsn)` as well as connect()
            await self.open()
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
        return self._hub.listener_pid

    @property
    def read_stats(self) -> Counter[str]:
        """A copy of the routed reads by outcome (`ReadRouter.stats`; a
        missing outcome counts 0); empty without a replica."""
        return Counter() if self._reads is None else Counter(self._reads.stats)

    # ------------------------------------------------------------------ calls

    async def fetch(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
        db_timeout: float | None = None,
    ) -> list[TupleRow]:
        """Run one statement on a pooled connection of the primary under a
        deadline; chatd errors (SQLSTATE class CD) are raised as ChatdError
        subclasses. Counted as a write: replica reads started afterwards
        wait until the replica has replayed it."""
        try:
            return await self._primary(query, params, db_timeout)
        finally:
            if self._reads is not None:
                self._reads.wrote()

    async def read(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None, *,
        db_timeout: float | None = None,
    ) -> list[TupleRow]:
        """`fetch` for a read-only statement that may be answered by the read
        replica (when there is one and it is fresh enough)."""
        if self._reads is not None:
            async def on_replica(conn: psycopg.AsyncConnection[Any]) -> list[TupleRow]:
                cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else []
            rows = await self._reads.read(on_replica)
            if rows is not None:
                return rows
        return await self._primary(query, params, db_timeout)

    async def _primary(
        self, query: str, params: Sequence[Any] | Mapping[str, Any] | None, db_timeout: float | None
    ) -> list[TupleRow]:
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
        agents: bool | None = None,
        db_timeout: float | None = None,
    ) -> UUID:
        """Create a chat with its first user message; it starts ``pending``.
        ``tools``: client tool definitions ``{name, description, input_schema}``
        the application answers (docs/tools.md); ``mcp_servers``: names of
        registered MCP servers this chat may use; ``agents``: the model may
        spawn sub-agents (docs/agents.md; None: as the model config says)."""
        value = await self._scalar(
            queries.CREATE_CHAT,
            [user_id, organization_id, _content_json(content), model_config_id, title,
             system_prompt, workspace_id, parent_chat_id, client_type,
             _tools_json(tools), None if mcp_servers is None else list(mcp_servers), agents],
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
        rows = await self.read(
            queries.LIST_CHATS,
            [user_id, organization_id, include_archived, limit, before, before_id],
            db_timeout=db_timeout,
        )
        return [ChatSummary.from_json(row) for (row,) in rows if isinstance(row, Mapping)]

    async def snapshot(
        self, user_id: UUID, chat_id: UUID, after_message_id: int = 0, *,
        min_version: int = 0, newest: int | None = None, db_timeout: float | None = None,
    ) -> Snapshot:
        """``chatd.get_chat_snapshot``: the chat, its messages after
        ``after_message_id`` (all pages; with ``newest``, 1 to 1000, only the
        newest, and ``Snapshot.before`` pages back with `messages_before`),
        the queue, the children and the running turn's stream parts (the rest
        via ``get_stream_parts``, on the primary). With a read replica, read
        there when it is fresh enough and its chat version is at least
        ``min_version`` (the newest a notification named); else the primary."""
        value: dict[str, Any] | None = None
        if self._reads is not None:
            async def on_replica(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
                async def run(query: str, params: list[Any]) -> Any:
                    row = await (await conn.execute(query, params)).fetchone()
                    return row[0] if row else None
                return await snapshot_pages(run, user_id, chat_id, after_message_id, newest)
            def new_enough(v: dict[str, Any]) -> bool:
                return (_int_or_none(v.get("version")) or 0) >= min_version
            value = await self._reads.read(on_replica, accept=new_enough)
        if value is None:  # no replica, or its answer did not stand
            async def on_primary(query: str, params: list[Any]) -> Any:
                rows = await self._primary(query, params, db_timeout)
                return rows[0][0] if rows else None
            value = await snapshot_pages(on_primary, user_id, chat_id, after_message_id, newest)
        lease = _int_or_none(value.get("parts_lease"))
        if value.get("parts_more") and lease is not None:
            parts = [p for p in value.get("parts") or [] if isinstance(p, Mapping)]
            seqs = [s for p in parts if (s := _int_or_none(p.get("seq"))) is not None]
            more = await self.stream_parts(
                user_id, chat_id, lease, max(seqs, default=-1), db_timeout=db_timeout
            )
            value["parts"] = parts + [{"seq": p.seq, "parts": p.parts} for p in more]
        return Snapshot.from_json(value)

    async def messages_before(
        self, user_id: UUID, chat_id: UUID, before_message_id: int | None = None, *,
        limit: int = 50, db_timeout: float | None = None,
    ) -> MessagePage:
        """``chatd.get_messages_before``: the newest ``limit`` (1 to 1000)
        visible messages before ``before_message_id`` (None: the newest), for
        a view that opens on the newest messages and loads older ones on
        demand (pass the page's ``before`` for the next older page). Constant
        time in the chat's length; may be served by the read replica."""
        rows = await self.read(
            queries.GET_MESSAGES_BEFORE, [user_id, chat_id, before_message_id, limit], db_timeout=db_timeout,
        )
        value = rows[0][0] if rows else None
        return MessagePage.from_json(value if isinstance(value, Mapping) else {})

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
        self, user_id: UUID, chat_id: UUID, after_message_id: int | None = None, *, newest: int | None = None
    ) -> Subscription:
        """Follow one chat: an async iterator of events (see the module doc).

        With ``after_message_id`` only messages with a greater id are emitted;
        with ``newest`` (1 to 1000) only the newest that many to begin with
        (``Subscription.before`` then pages back with `messages_before`);
        with neither, the whole visible history. Use it as an async context
        manager (or call ``aclose()``) to stop listening.
        """
        if self._closed:
            raise RuntimeError("client is closed")
        return Subscription(self, user_id, chat_id, after_message_id, newest=newest)
