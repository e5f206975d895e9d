"""The chatd client: application functions and race-free chat subscriptions.

    async with await Client.connect(dsn) as client:
        chat_id = await client.create_chat(user_id, org_id, "Hello!")
        async with client.subscribe(user_id, chat_id) as events:
            async for event in events:
                ...

Calls go through a psycopg_pool.AsyncConnectionPool (autocommit, one SQL
function call per method). Every subscription of one Client shares ONE
autocommit listener connection, opened on the first subscription.

Subscribe protocol (DESIGN.md section 5, docs/client.md):

1. LISTEN on ``chatd_chat_<chat id>`` and wait until the LISTEN is executed;
2. read a snapshot with ``chatd.get_chat_snapshot`` (chat row with its version,
   messages, queue, stream parts of the running turn) and emit it;
3. apply only notifications newer than what was emitted: chat hints by
   version, streamed parts by (lease, seq). A hint is only a hint, never
   data (any database login can LISTEN and NOTIFY on any channel): the
   subscription re-reads durable state (messages after the last seen id,
   stream parts after the last seen seq through ``chatd.get_stream_parts``)
   and emits the difference. A forged notification at worst causes a re-read.

After the listener reconnects, every subscription re-snapshots (NOTIFY is not
durable) and emits only what it has not emitted yet. Every database call has a
timeout (``Client.timeout``, 5 s by default) when the caller gives none; a
failed refresh is logged and retried on the next hint or reconnect instead of
ending the subscription.

Database errors raised by chatd's functions (SQLSTATE class ``CD``) surface as
`ChatdError` subclasses; other errors (connection loss, timeouts) propagate
unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias
from uuid import UUID

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from chatd.listener import Listener

__all__ = [
    "DEFAULT_TIMEOUT",
    "ChatArchived",
    "ChatDeletedEvent",
    "ChatError",
    "ChatEvent",
    "ChatInfo",
    "ChatNotFound",
    "ChatSummary",
    "ChatdError",
    "Client",
    "ErrorEvent",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "LeaseLost",
    "Message",
    "MessageEvent",
    "MessagesDeletedEvent",
    "PartsEvent",
    "QueueEvent",
    "QueuedMessage",
    "QueueFull",
    "RetryEvent",
    "Snapshot",
    "StatusEvent",
    "StreamParts",
    "Subscription",
    "TitleEvent",
    "UsageLimitExceeded",
    "error_from_psycopg",
]

log = logging.getLogger("chatd.client")

#: Seconds a database call may take when the caller gives no timeout.
DEFAULT_TIMEOUT: Final = 5.0

Content: TypeAlias = str | Sequence[Mapping[str, Any]]


# --------------------------------------------------------------------------- errors


class ChatdError(Exception):
    """An error raised by a chatd SQL function (SQLSTATE class CD)."""

    sqlstate: str | None = None

    def __init__(
        self, message: str, *, sqlstate: str | None = None, detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint


class ChatNotFound(ChatdError):
    sqlstate = "CD001"


class Forbidden(ChatdError):
    sqlstate = "CD002"


class InvalidTransition(ChatdError):
    sqlstate = "CD003"


class LeaseLost(ChatdError):
    sqlstate = "CD004"


class QueueFull(ChatdError):
    sqlstate = "CD005"


class UsageLimitExceeded(ChatdError):
    """The user's spend in the current period reached the limit (CD006).

    ``spent_micros``, ``limit_micros`` and ``resets_at`` come from the JSON
    DETAIL of the error; they are None when the detail is not parseable.
    """

    sqlstate = "CD006"

    def __init__(
        self, message: str, *, sqlstate: str | None = None, detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, sqlstate=sqlstate, detail=detail, hint=hint)
        info: dict[str, Any] = {}
        with contextlib.suppress(ValueError, TypeError):
            loaded = json.loads(detail or "")
            if isinstance(loaded, dict):
                info = loaded
        self.spent_micros: int | None = _int_or_none(info.get("spent_micros"))
        self.limit_micros: int | None = _int_or_none(info.get("limit_micros"))
        self.resets_at: datetime | None = _datetime_or_none(info.get("resets_at"))


class InvalidInput(ChatdError):
    sqlstate = "CD007"


class ChatArchived(ChatdError):
    sqlstate = "CD008"


_ERRORS: dict[str, type[ChatdError]] = {
    cls.sqlstate: cls
    for cls in (ChatNotFound, Forbidden, InvalidTransition, LeaseLost, QueueFull,
                UsageLimitExceeded, InvalidInput, ChatArchived)
    if cls.sqlstate is not None
}


def error_from_psycopg(exc: psycopg.Error) -> ChatdError | None:
    """The typed chatd error for a database error of SQLSTATE class CD, else None."""
    sqlstate = exc.sqlstate
    if not sqlstate or not sqlstate.startswith("CD"):
        return None
    diag = exc.diag
    cls = _ERRORS.get(sqlstate, ChatdError)
    return cls(
        diag.message_primary or str(exc), sqlstate=sqlstate, detail=diag.message_detail,
        hint=diag.message_hint,
    )


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _datetime_or_none(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _uuid_or_none(value: Any) -> UUID | None:
    if value is None or isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        return None


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ChatError:
    """A turn failure as stored in ``chats.last_error`` (DESIGN.md section 6)."""

    message: str
    kind: str
    provider: str | None = None
    retryable: bool | None = None
    status_code: int | None = None
    detail: str | None = None

    @classmethod
    def from_json(cls, obj: Any) -> ChatError | None:
        if not isinstance(obj, Mapping):
            return None
        return cls(
            message=str(obj.get("message", "")),
            kind=str(obj.get("kind", "generic")),
            provider=obj.get("provider"),
            retryable=obj.get("retryable"),
            status_code=_int_or_none(obj.get("status_code")),
            detail=obj.get("detail"),
        )


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
class Snapshot:
    """``chatd.get_chat_snapshot``: the chat, messages after the given id,
    the queue and the stream parts of the running turn."""

    chat: ChatInfo
    messages: list[Message]
    queue: list[QueuedMessage]
    parts: list[StreamParts]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

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


# --------------------------------------------------------------------------- events


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
class TitleEvent(ChatEvent):
    version: int
    title: str


@dataclass(frozen=True)
class ChatDeletedEvent(ChatEvent):
    """The chat row was deleted; the subscription ends after this event."""


Event: TypeAlias = (
    StatusEvent | MessageEvent | MessagesDeletedEvent | PartsEvent | QueueEvent | RetryEvent
    | ErrorEvent | TitleEvent | ChatDeletedEvent
)


# --------------------------------------------------------------------------- client


class _Resync:
    """Queue marker: the listener reconnected; re-read everything."""


class _Closed:
    """Queue marker: the client is closing."""


_RESYNC: Final = _Resync()
_CLOSED: Final = _Closed()

_Item: TypeAlias = Mapping[str, Any] | _Resync | _Closed

_TRANSIENT: Final = (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError)
# Stream part batches read per chatd.get_stream_parts call.
_PARTS_PAGE: Final = 200


def chat_channel(chat_id: UUID | str) -> str:
    return f"chatd_chat_{chat_id}"


def _content_json(content: Content) -> Jsonb:
    return Jsonb(content if isinstance(content, str) else [dict(p) for p in content])


class _PartsReader:
    """Batches ``chatd.get_stream_parts`` calls: a read requested while two
    are in flight joins the next one, so under load one round trip serves
    many subscriptions and at rest a read starts at once."""

    def __init__(self, client: Client) -> None:
        self._client = client
        # (user, chat, lease) -> (smallest after_seq asked, waiters with their after_seq)
        self._pending: dict[
            tuple[UUID, UUID, int], tuple[int, list[tuple[int, asyncio.Future[tuple[list[StreamParts], bool]]]]]
        ] = {}
        self._task: asyncio.Task[None] | None = None
        self._timeout: float | None = None
        # two reads in flight at most: a request waits for neither at rest,
        # and joins the next batch under load
        self._slots = asyncio.Semaphore(2)
        self._reads: set[asyncio.Task[None]] = set()

    async def read(
        self, user_id: UUID, chat_id: UUID, lease: int, after_seq: int, db_timeout: float | None
    ) -> tuple[list[StreamParts], bool]:
        """The batches after after_seq, and whether that is all of them."""
        future: asyncio.Future[tuple[list[StreamParts], bool]] = asyncio.get_running_loop().create_future()
        key = (user_id, chat_id, lease)
        first, waiters = self._pending.get(key, (after_seq, []))
        waiters.append((after_seq, future))
        self._pending[key] = (min(first, after_seq), waiters)
        if db_timeout is not None:
            self._timeout = db_timeout
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="chatd-client parts reader")
        return await future

    async def _run(self) -> None:
        while self._pending:
            await self._slots.acquire()
            batch, self._pending = self._pending, {}
            task = asyncio.create_task(self._read_batch(batch))
            self._reads.add(task)
            task.add_done_callback(self._read_done)

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reads.discard(task)
        self._slots.release()

    async def _read_batch(
        self,
        batch: Mapping[tuple[UUID, UUID, int], tuple[int, list[tuple[int, asyncio.Future[tuple[list[StreamParts], bool]]]]]],
    ) -> None:
        by_user: dict[UUID, list[tuple[UUID, int, int]]] = {}
        for (user_id, chat_id, lease), (after_seq, _w) in batch.items():
            by_user.setdefault(user_id, []).append((chat_id, lease, after_seq))
        await asyncio.gather(*(self._read_user(u, items, batch) for u, items in by_user.items()))

    async def _read_user(
        self, user_id: UUID, items: list[tuple[UUID, int, int]],
        batch: Mapping[tuple[UUID, UUID, int], tuple[int, list[tuple[int, asyncio.Future[tuple[list[StreamParts], bool]]]]]],
    ) -> None:
        try:
            rows = await self._client.fetch(
                "SELECT chat_id, lease, seq, parts FROM chatd.get_stream_parts(%s, %s, %s, %s, %s)",
                [user_id, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items], _PARTS_PAGE],
                db_timeout=self._timeout,
            )
        except Exception as exc:
            if len(items) > 1 and isinstance(exc, ChatdError):
                # one chat the user may no longer read: read the others alone
                for item in items:
                    await self._read_user(user_id, [item], batch)
                return
            for item in items:
                for _after, future in batch[(user_id, item[0], item[1])][1]:
                    if not future.done():
                        future.set_exception(exc)
            return
        found: dict[tuple[UUID, int], list[StreamParts]] = {}
        for chat_id, lease, seq, parts in rows:
            found.setdefault((UUID(str(chat_id)), int(lease)), []).append(
                StreamParts(int(lease), int(seq), list(parts) if isinstance(parts, list) else [])
            )
        for chat_id, lease, _first in items:
            got = found.get((chat_id, lease), [])
            for after, future in batch[(user_id, chat_id, lease)][1]:
                if not future.done():
                    future.set_result(([p for p in got if p.seq > after], len(got) < _PARTS_PAGE))


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
    ) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self.application_name = application_name
        self.listen_poll = listen_poll
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "application_name": application_name},
            open=False,
        )
        self._subs: dict[str, set[Subscription]] = {}
        self._parts_reader = _PartsReader(self)
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
        self,
        user_id: UUID,
        organization_id: UUID,
        content: Content,
        *,
        model_config_id: UUID | None = None,
        title: str | None = None,
        system_prompt: str | None = None,
        workspace_id: UUID | None = None,
        parent_chat_id: UUID | None = None,
        client_type: Literal["ui", "api"] | None = None,
        db_timeout: float | None = None,
    ) -> UUID:
        """Create a chat with its first user message; it starts ``pending``."""
        value = await self._scalar(
            "SELECT chatd.create_chat(p_user_id => %s, p_organization_id => %s, p_content => %s, "
            "p_model_config_id => %s, p_title => %s, p_system_prompt => %s, p_workspace_id => %s, "
            "p_parent_chat_id => %s, p_client_type => coalesce(%s, 'api')::chatd.client_type)",
            [user_id, organization_id, _content_json(content), model_config_id, title,
             system_prompt, workspace_id, parent_chat_id, client_type],
            db_timeout,
        )
        return UUID(str(value))

    async def send_message(
        self,
        user_id: UUID,
        chat_id: UUID,
        content: Content,
        *,
        busy_behavior: Literal["queue", "interrupt"] = "queue",
        model_config_id: UUID | None = None,
        db_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send a message: runs at once when the chat is idle, else queued
        (``busy_behavior="interrupt"`` also interrupts the running turn)."""
        value = await self._scalar(
            "SELECT chatd.send_message(%s, %s, %s, %s, %s)",
            [user_id, chat_id, _content_json(content), busy_behavior, model_config_id],
            db_timeout,
        )
        return dict(value) if isinstance(value, Mapping) else {"result": value}

    async def interrupt(self, user_id: UUID, chat_id: UUID, *, db_timeout: float | None = None) -> Any:
        return await self._scalar("SELECT chatd.interrupt_chat(%s, %s)", [user_id, chat_id], db_timeout)

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
            "SELECT chatd.edit_message(%s, %s, %s, %s, %s)",
            [user_id, chat_id, message_id, _content_json(content), model_config_id],
            db_timeout,
        )

    async def archive(self, user_id: UUID, chat_id: UUID, *, db_timeout: float | None = None) -> Any:
        return await self._scalar("SELECT chatd.archive_chat(%s, %s)", [user_id, chat_id], db_timeout)

    async def unarchive(self, user_id: UUID, chat_id: UUID, *, db_timeout: float | None = None) -> Any:
        return await self._scalar("SELECT chatd.unarchive_chat(%s, %s)", [user_id, chat_id], db_timeout)

    async def list_chats(
        self,
        user_id: UUID,
        organization_id: UUID | None = None,
        *,
        include_archived: bool = False,
        limit: int = 50,
        before: datetime | None = None,
        db_timeout: float | None = None,
    ) -> list[ChatSummary]:
        """The user's chats, most recently updated first; ``before`` (an
        ``updated_at``) pages."""
        rows = await self.fetch(
            "SELECT to_jsonb(c) FROM chatd.list_chats(%s, %s, %s, %s, %s) AS c",
            [user_id, organization_id, include_archived, limit, before],
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
                "SELECT chatd.get_chat_snapshot(%s, %s, %s)",
                [user_id, chat_id, after],
                db_timeout,
            )
            if not isinstance(value, Mapping):
                raise ChatNotFound(f"chat {chat_id} not found", sqlstate="CD001")
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


class Subscription:
    """Events of one chat; see `Client.subscribe` and the module doc."""

    def __init__(
        self, client: Client, user_id: UUID, chat_id: UUID, after_message_id: int | None
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
        self.last_parts: tuple[int, int] = (0, -1)
        self.chat: ChatInfo | None = None
        self._queue_ids: list[int] | None = None
        self._stale = False
        self._base_version = 0
        self._after = after_message_id or 0
        self._emitted: list[int] = []  # ids of the live messages emitted
        self._full = False
        self.refresh_failures = 0

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
        self._client._unregister(self)
        gen, self._gen = self._gen, None
        if gen is not None:
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                await aclose()

    # ------------------------------------------------------------------ internals

    async def _run(self) -> AsyncIterator[Event]:
        client = self._client
        try:
            await client._register(self)
            if client.after_listen is not None:
                await client.after_listen(self.chat_id)
            snapshot = await client.snapshot(self.user_id, self.chat_id, self.last_message_id)
            self._base_version = snapshot.chat.version
            for event in self._apply(snapshot):
                yield event
            while True:
                # Everything already delivered, as one batch: the
                # notifications of one transaction arrive together.
                batch = [await self._queue.get()]
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                if any(self._is_edit(item) for item in batch):
                    self._full = True  # messages changed: re-read them all
                for item in batch:
                    if isinstance(item, _Closed):
                        return
                    events = (
                        await self._refresh() if isinstance(item, _Resync)
                        else await self._on_hint(item)
                    )
                    for event in events:
                        yield event
                        if isinstance(event, ChatDeletedEvent):
                            return
        finally:
            client._unregister(self)

    async def _on_hint(self, hint: Mapping[str, Any]) -> list[Event]:
        kind = hint.get("kind")
        if kind == "parts":
            return await self._on_parts(hint)
        if kind == "deleted":
            return [ChatDeletedEvent(self.chat_id)]
        version = _int_or_none(hint.get("version")) or 0
        if version <= self.last_version and not self._stale:
            return []  # already reflected in what was emitted
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
        except (ChatNotFound, Forbidden):
            raise
        except (*_TRANSIENT, psycopg.Error) as exc:
            self._stale = True
            self.refresh_failures += 1
            log.warning("chat %s: reading parts failed, will retry on the next hint: %s", self.chat_id, exc)
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
                self.user_id, self.chat_id, self._after if full else self.last_message_id
            )
        except (ChatNotFound, Forbidden):
            raise
        except (*_TRANSIENT, psycopg.Error) as exc:
            # Keep the subscription: the next hint or reconnect retries.
            self._stale = True
            self.refresh_failures += 1
            log.warning("chat %s: refresh failed, will retry on the next hint: %s", self.chat_id, exc)
            return []
        self._stale = False
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

    def _apply(self, snapshot: Snapshot) -> list[Event]:
        """Events for everything in the snapshot not emitted yet."""
        events: list[Event] = []
        chat, prev = snapshot.chat, self.chat
        for message in snapshot.messages:
            if message.id > self.last_message_id:
                events.append(MessageEvent(self.chat_id, message))
                self.last_message_id = message.id
                self._emitted.append(message.id)
        if prev is None or chat.version > prev.version:
            if prev is None or (chat.status, chat.archived) != (prev.status, prev.archived):
                events.append(StatusEvent(
                    self.chat_id, chat.status, chat.version, chat.archived, chat.lease, chat.worker_id,
                ))
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
        if self.chat is not None and self.chat.status == "running":
            lease = self.chat.lease
            for part in snapshot.parts:
                if part.lease == lease and (part.lease, part.seq) > self.last_parts:
                    events.append(PartsEvent(self.chat_id, part.lease, part.seq, part.parts))
                    self.last_parts = (part.lease, part.seq)
        return events
