"""One LISTEN connection that follows a set of channels and survives reconnects.

Shared by the worker (``chatd_wake`` plus the channel of every turn it runs)
and the client (the channel of every subscribed chat). The owner says which
channels it wants; the listener keeps an autocommit connection LISTENing on
exactly those, changing them in one round trip, and hands every notification
to ``on_notify``. psycopg's ``notifies()`` holds the connection, so channel
changes are applied between short notification batches (``poll_interval``).

When the connection is lost, it reconnects with capped exponential backoff
(reset by a successful connection) and LISTENs again. NOTIFY is not durable:
whatever was notified while the connection was down is gone, so after every
(re)connection ``on_listening`` is told a new ``generation`` and must re-read
durable state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg
from psycopg.rows import TupleRow

__all__ = ["Listener"]

log = logging.getLogger("chatd.listener")

# Called after the channels were (re)armed: the channels now listened on, the
# connection's generation (1 for the first connection, then +1 per reconnect).
OnListening = Callable[[frozenset[str], int], Awaitable[None]]


class Listener:
    def __init__(
        self,
        dsn: str,
        *,
        application_name: str,
        on_notify: Callable[[str, str], None],
        on_listening: OnListening | None = None,
        poll_interval: float = 0.25,
        command_timeout: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.application_name = application_name
        self.on_notify = on_notify
        self.on_listening = on_listening
        self.poll_interval = poll_interval
        self.command_timeout = command_timeout
        self.generation = 0
        self.reconnects = 0
        self.connection: psycopg.AsyncConnection[TupleRow] | None = None
        self._wanted: set[str] = set()
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ channels

    def listen(self, channel: str) -> None:
        if channel not in self._wanted:
            self._wanted.add(channel)
            self._changed.set()

    def unlisten(self, channel: str) -> None:
        if channel in self._wanted:
            self._wanted.discard(channel)
            self._changed.set()

    @property
    def backend_pid(self) -> int | None:
        """The listening backend's pid (None while not connected)."""
        conn = self.connection
        if conn is None or conn.closed:
            return None
        return conn.info.backend_pid

    # ------------------------------------------------------------------ running

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()

    async def run(self) -> None:
        """Listen until ``stop()``, reconnecting whenever the connection is lost."""
        delay = 0.05
        lost_since: float | None = None
        while not self._stop.is_set():
            try:
                async with asyncio.timeout(max(self.command_timeout, 10.0)):
                    conn = await psycopg.AsyncConnection.connect(
                        self.dsn, autocommit=True, connect_timeout=10,
                        application_name=self.application_name,
                        keepalives=1, keepalives_idle=30, keepalives_interval=10,
                        keepalives_count=3,
                    )
                async with conn:
                    self.connection = conn
                    self.generation += 1
                    if lost_since is not None:  # one line per outage, one per recovery
                        log.info("%s: listening again after %.1fs", self.application_name,
                                 time.monotonic() - lost_since)
                        lost_since = None
                    delay = 0.05  # a successful connection resets the backoff
                    await self._serve(conn)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self._stop.is_set():
                    return
                self.reconnects += 1
                if lost_since is None:
                    lost_since = time.monotonic()
                    log.warning("%s: connection lost, reconnecting with backoff: %s",
                                self.application_name, str(exc).strip() or repr(exc))
                else:
                    log.debug("%s: reconnect failed, next in %.2fs: %s", self.application_name, delay, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                delay = min(delay * 2, 5.0)
            finally:
                self.connection = None

    async def _serve(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        listening: frozenset[str] = frozenset()
        self._changed.set()  # arm every wanted channel on this new connection
        while not self._stop.is_set():
            if self._changed.is_set():
                self._changed.clear()
                wanted = frozenset(self._wanted)
                commands = [f'LISTEN "{c}"' for c in sorted(wanted - listening)]
                commands += [f'UNLISTEN "{c}"' for c in sorted(listening - wanted)]
                if commands:  # every change in one round trip
                    async with asyncio.timeout(self.command_timeout):
                        await conn.execute("; ".join(commands))
                listening = wanted
                if self.on_listening is not None:
                    await self.on_listening(listening, self.generation)
            # stop_after=1: notifies() returns after the first packet's
            # notifications, all of them; breaking out of its loop instead
            # would drop the rest of that packet (psycopg yields them from a
            # list it already read), so a channel change mid-burst lost hints
            async for note in conn.notifies(timeout=self.poll_interval, stop_after=1):
                self.on_notify(note.channel, note.payload)
            # notifies() returning is also how a dead connection is noticed
            if conn.closed or conn.broken:
                raise psycopg.OperationalError("listener connection closed")
