"""Stream parts reads: `PartsReader` batches every subscription's
``chatd.get_stream_parts`` call into one round trip per user while a read is
in flight. Parts are read only through that authorized function: a parts
notification says that a batch exists, never what it holds."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from uuid import UUID

from chatd.client.models import StreamParts
from chatd.protocol import queries
from chatd.protocol.errors import ChatdError

if TYPE_CHECKING:
    from chatd.client.client import Client

__all__ = ["PARTS_PAGE", "PartsReader"]

#: Stream part batches read per chatd.get_stream_parts call and chat.
PARTS_PAGE: Final = 200


class PartsReader:
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
            rows = await self._client._primary(
                queries.GET_STREAM_PARTS,
                [user_id, [i[0] for i in items], [i[1] for i in items], [i[2] for i in items], PARTS_PAGE],
                self._timeout,
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
                    future.set_result(([p for p in got if p.seq > after], len(got) < PARTS_PAGE))
