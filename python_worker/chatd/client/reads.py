"""Reads off a read replica, where that is safe (docs/scale.md, "Read replicas").

A `Client` given a ``read_dsn`` serves snapshot pages, message pages and chat
lists from that server (a hot standby) when, and only when, its answer is
fresh enough; otherwise the primary answers. The rules:

* **Bounded staleness, and the client's own writes.** The router keeps an
  LSN watermark: the primary's ``pg_current_wal_lsn()``, read again when it
  is older than ``max_staleness`` seconds or this client wrote since. A
  replica read first checks ``pg_last_wal_replay_lsn() >= watermark`` on the
  replica; a replica behind it (lagging, or replay paused) is not used. So a
  replica answer holds every commit older than ``max_staleness`` and every
  write this client made (read-your-writes).
* **Never older than a notification seen.** A caller that saw a notification
  with version V (a subscription does) asks for ``min_version=V``; a replica
  snapshot of an older version is dropped and the primary is read.
* **Only a clean answer counts.** A replica error of any kind (not found,
  forbidden, a timeout, a lost connection) sends the read to the primary,
  which gives the authoritative answer; an unreachable replica is left
  alone for a backoff that doubles up to ``RETRY_CAP`` seconds.

Every decision is counted in `ReadRouter.stats`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from chatd.protocol import queries
from chatd.protocol.errors import ChatdError

__all__ = ["CONNECT_WAIT", "DEFAULT_MAX_STALENESS", "RETRY_CAP", "ReadRouter"]

log = logging.getLogger("chatd.client")

T = TypeVar("T")

#: Seconds of commits a replica answer may miss (from other clients).
DEFAULT_MAX_STALENESS: Final = 1.0
#: Seconds a read waits for a replica connection before reading the primary.
CONNECT_WAIT: Final = 1.0
#: Longest pause, in seconds, before an unreachable replica is tried again.
RETRY_CAP: Final = 30.0

_UNAVAILABLE: Final = (psycopg.OperationalError, psycopg.InterfaceError, OSError, TimeoutError)


class ReadRouter:
    """Sends the reads that may be stale to a replica when it is fresh enough."""

    def __init__(
        self,
        read_dsn: str,
        primary: AsyncConnectionPool,
        *,
        timeout: float,
        max_staleness: float = DEFAULT_MAX_STALENESS,
        max_size: int = 10,
        application_name: str = "chatd-client",
        prepare_threshold: bool = True,
    ) -> None:
        """``primary``: the client's pool, for the LSN watermark."""
        if max_staleness < 0:
            raise ValueError("max_staleness must not be negative")
        self.timeout = timeout
        self.max_staleness = max_staleness
        self._primary = primary
        self.pool = AsyncConnectionPool(
            read_dsn,
            min_size=0,
            max_size=max_size,
            kwargs={
                "autocommit": True, "application_name": f"{application_name} reads",
                **({} if prepare_threshold else {"prepare_threshold": None}),
            },
            open=False,
            check=AsyncConnectionPool.check_connection,
        )
        self._watermark: str | None = None
        self._watermark_at = float("-inf")  # when the watermark's read started
        self._watermark_writes = -1  # writes finished before that read started
        self._writes = 0  # writes of this client finished so far
        self._refreshing: asyncio.Task[None] | None = None
        self._refresh_at = float("-inf")
        self._refresh_writes = -1
        self._down_until = float("-inf")
        self._down_for = 0.0
        #: Reads by outcome: ``replica``, and the primary fallbacks
        #: ``lag`` (replica behind the watermark), ``version`` (older than a
        #: notification seen), ``error`` (the replica refused the read) and
        #: ``unavailable`` (unreachable or too slow, or in its backoff); and
        #: ``watermark``, the reads of the primary's WAL position, and
        #: ``watermark_failed``, reads that went to the primary because that
        #: position could not be read.
        self.stats: Counter[str] = Counter()

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        await self.pool.close()

    def wrote(self) -> None:
        """A write of this client finished (committed or not: a write whose
        answer was lost may have committed); reads started after this wait
        for it."""
        self._writes += 1

    async def _required_lsn(self) -> str:
        """The primary's WAL position a replica must have replayed for a read
        starting now: read at most ``max_staleness`` seconds ago, after every
        write of this client that finished before now. One primary round
        trip per ``max_staleness`` (or per write), shared by concurrent reads."""
        needed, oldest = self._writes, time.monotonic() - self.max_staleness
        while True:
            if (self._watermark is not None and self._watermark_writes >= needed
                    and self._watermark_at >= oldest):
                return self._watermark
            task = self._refreshing
            if task is None or task.done() or self._refresh_writes < needed or self._refresh_at < oldest:
                self._refresh_at, self._refresh_writes = time.monotonic(), self._writes
                task = self._refreshing = asyncio.create_task(
                    self._read_primary_lsn(self._refresh_at, self._refresh_writes)
                )
            await asyncio.shield(task)

    async def _read_primary_lsn(self, started: float, writes: int) -> None:
        self.stats["watermark"] += 1
        async with self._primary.connection() as conn:
            cursor = await conn.execute(queries.PRIMARY_WAL_LSN)
            row = await cursor.fetchone()
        if row is None:  # pragma: no cover - the statement always returns one row
            raise RuntimeError("pg_current_wal_lsn() returned no row")
        if started > self._watermark_at:  # a slower, older read never wins
            self._watermark, self._watermark_at, self._watermark_writes = str(row[0]), started, writes

    async def read(
        self,
        work: Callable[[AsyncConnection[Any]], Awaitable[T]],
        *,
        accept: Callable[[T], bool] | None = None,
    ) -> T | None:
        """Run ``work`` on a replica connection if the replica is fresh and
        reachable: its result when that answer stands, None when the caller
        must read the primary (``accept`` returning false counts as
        ``version``). ``work`` must not return None."""
        if time.monotonic() < self._down_until:
            self.stats["unavailable"] += 1
            return None
        try:
            async with asyncio.timeout(self.timeout):
                lsn = await self._required_lsn()
        except (*_UNAVAILABLE, psycopg.Error):
            # the primary did not give its position: not the replica's fault
            # (no backoff); the caller's read of the primary will tell
            self.stats["watermark_failed"] += 1
            return None
        try:
            async with asyncio.timeout(self.timeout):
                # a short wait for a connection: a replica that cannot give
                # one soon is treated as down (the primary answers instead)
                async with self.pool.connection(timeout=min(self.timeout, CONNECT_WAIT)) as conn:
                    cursor = await conn.execute(queries.REPLICA_HAS_REPLAYED, [lsn])
                    row = await cursor.fetchone()
                    if row is None or not row[0]:
                        self.stats["lag"] += 1
                        return None
                    result = await work(conn)
        except _UNAVAILABLE as exc:
            if isinstance(exc, psycopg.Error) and exc.sqlstate is not None and not exc.sqlstate.startswith("08"):
                self.stats["error"] += 1  # the server answered, with an error: not a connection loss
                return None
            self._mark_down(exc)
            return None
        except (psycopg.Error, ChatdError):
            self.stats["error"] += 1
            return None
        if self._down_for:
            log.info("read replica answering again")
            self._down_for = 0.0
        if accept is not None and not accept(result):
            self.stats["version"] += 1
            return None
        self.stats["replica"] += 1
        return result

    def _mark_down(self, exc: BaseException) -> None:
        self.stats["unavailable"] += 1
        if not self._down_for:
            log.warning("read replica unavailable, reading from the primary: %s",
                        str(exc).strip() or type(exc).__name__)
        self._down_for = min(max(self._down_for * 2, 0.5), RETRY_CAP)
        self._down_until = time.monotonic() + self._down_for
