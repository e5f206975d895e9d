"""`chatd worker`: listen, claim, call the LLM, stream, write back.

The worker decides nothing about chat state: SQL does (see
docs/state-machine.md). It runs four loops on one event loop:

* claim: races the wake event (set by a `chatd_wake` notification, a
  finished turn, or a reconnect) against the poll interval, then claims at
  most as many chats as it has room for;
* listener: one autocommit connection LISTENing on `chatd_wake` and on the
  per-chat channel of every turn it runs (so an interrupt cancels the turn at
  once); after a lost connection it reconnects with capped backoff,
  re-LISTENs and rescans, since NOTIFY is not durable;
* heartbeat: one batched statement per interval; cancels the turns SQL says
  this worker no longer owns;
* maintenance: recover_stale_chats() and janitor() now and then.

Every database call has a deadline (``db_timeout``), so a stalled database
cannot wedge a task.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from chatd.config import WorkerConfig
from chatd.listener import Listener
from chatd.llm import ClientCache, stream_turn
from chatd.logs import bind, log_failure, reason
from chatd.metrics import Metrics, serve_metrics
from chatd.protocol import names, queries
from chatd.protocol.errors import LeaseLost
from chatd.worker.finish import FinishBatcher
from chatd.worker.loops import claim_loop, heartbeat_loop, heartbeat_once, maintenance_loop
from chatd.worker.outage import Outage, WorkerFatal
from chatd.worker.turn import Claim, Turn, TurnRun

__all__ = ["StreamFn", "Worker", "WorkerFatal"]

log = logging.getLogger("chatd.worker")

# Content bytes (as JSON text) of the history one turn may load; about the
# size of the largest context windows, far below what would hurt the worker.
MAX_HISTORY_BYTES = 64 * 1024 * 1024

# Errors after which reconnecting cannot help: wrong password, no such role or
# database, no pg_hba entry.
_FATAL_CONNECT_HINTS = ("authentication failed", "does not exist", "no pg_hba.conf entry",
                        "password authentication", "permission denied")

StreamFn = Callable[..., Any]


class Worker:
    def __init__(self, config: WorkerConfig, *, stream: StreamFn = stream_turn) -> None:
        self.config = config
        self.stream = stream
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.turns: dict[UUID, Turn] = {}
        self.metrics = Metrics()
        self.metrics.in_flight.set_function(lambda: len(self.turns))
        self.clients = ClientCache()
        self.heartbeat_interval = config.heartbeat_interval or 5.0
        self.startup_timeout = 60.0
        self._pool: AsyncConnectionPool | None = None
        self.listener = None if config.poll_only else Listener(
            config.database_url,
            application_name=f"chatd-listener {config.worker_id}",
            on_notify=self._on_notification,
            on_listening=self._on_listening,
            command_timeout=config.db_timeout,
        )
        if self.listener is not None:
            self.listener.listen(names.WAKE_CHANNEL)
        self._listener_generation = 0
        self.finisher = FinishBatcher(self._fetch, self.metrics)
        # A turn whose history (the prompt) is larger fails for good (kind
        # config) instead of being loaded: no chat can exhaust the worker.
        self.max_history_bytes = MAX_HISTORY_BYTES
        self.history_page = 100
        self.ready = asyncio.Event()  # set once LISTEN is armed (or poll-only) and loops run
        self._last_heal = 0.0
        self.outage = Outage()
        self._stop_by: float | None = None  # monotonic deadline of the shutdown (stop + grace)

    # ------------------------------------------------------------------ db

    @property
    def pool(self) -> AsyncConnectionPool:
        assert self._pool is not None, "worker not started"
        return self._pool

    async def _fetch(
        self, query: str, params: Mapping[str, Any], *, deadline: float | None = None
    ) -> list[TupleRow]:
        """One statement on a pooled autocommit connection, under a deadline."""
        self.metrics.inc("chatd_worker_db_calls_total")
        started = time.monotonic()
        try:
            async with asyncio.timeout(deadline or self.config.db_timeout):
                async with self.pool.connection() as conn:
                    cursor = await conn.execute(query, params)
                    rows = await cursor.fetchall() if cursor.description else []
            self.outage.ok()
            return rows
        except psycopg.OperationalError as exc:
            self.outage.failed(query, exc)
            self._heal_pool()
            raise
        except psycopg.Error as exc:
            if exc.sqlstate == names.LEASE_LOST:
                raise LeaseLost(str(exc)) from exc
            raise
        except TimeoutError as exc:
            self.metrics.inc("chatd_worker_db_timeouts_total")
            self.outage.failed(query, exc)
            raise
        finally:
            self.metrics.db_call(query, time.monotonic() - started)

    def _heal_pool(self) -> None:
        """After a connection-level error (a server restart drops every
        connection at once), have the pool test its idle connections and
        replace the dead ones, instead of failing once per dead connection."""
        now = time.monotonic()
        if self._pool is None or now - self._last_heal < 1.0:
            return
        self._last_heal = now
        task = asyncio.create_task(self._pool.check())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Open the pool after a preflight that tells fatal problems (auth,
        missing schema) from transient ones (network), retrying the latter."""
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.config.database_url, connect_timeout=10, autocommit=True
                ) as conn:
                    row = await (await conn.execute(queries.SCHEMA_PRESENT)).fetchone()
                    if not row or not row[0]:
                        raise WorkerFatal(
                            "the chatd schema is missing from this database: run `chatd migrate` first"
                        )
                    settings = await (await conn.execute(queries.WORKER_SETTINGS)).fetchone()
                break
            except psycopg.OperationalError as exc:
                message = str(exc)
                if any(hint in message for hint in _FATAL_CONNECT_HINTS):
                    raise WorkerFatal(f"cannot use the database: {message.strip()}",
                                      unreachable=True) from exc
                if self.stopping.is_set():
                    raise WorkerFatal("stopped before the database could be reached",
                                      unreachable=True) from exc
                log.warning("database unreachable, retrying in %.1fs: %s", delay, message.strip())
                await self.sleep_unless_stopping(delay)
                delay = min(delay * 2, 10.0)
        if settings:
            heartbeat_ms, startup_ms, _stale_ms = settings
            if self.config.heartbeat_interval is None:
                self.heartbeat_interval = heartbeat_ms / 1000
            self.startup_timeout = startup_ms / 1000
        self._pool = AsyncConnectionPool(
            self.config.database_url,
            min_size=1,
            max_size=self.config.pool_size,
            kwargs={
                "autocommit": True, "application_name": f"chatd-worker {self.config.worker_id}",
                # PgBouncer in transaction mode (what --poll-only is for) hands
                # each transaction any server connection: no server-side prepares
                **({"prepare_threshold": None} if self.config.poll_only else {}),
            },
            open=False,
            # 0: a failed background reconnect is not retried on a timer; the
            # next call that needs a connection starts a new attempt, and its
            # failure surfaces as that call's error or timeout
            reconnect_timeout=0,
        )
        await self._pool.open(wait=True, timeout=30)

    async def run(self) -> None:
        bind(worker_id=self.config.worker_id)  # a field of every line of this worker's tasks
        await self.connect()
        mode = "passive" if self.config.passive else "poll-only" if self.config.poll_only else "listening"
        log.info("worker %s started (%s, max_chats=%d)", self.config.worker_id, mode, self.config.max_chats)
        loops = [heartbeat_loop(self), maintenance_loop(self)]
        if self.listener is not None:
            loops.append(self.listener.run())
        else:
            self.ready.set()
        if not self.config.passive:
            loops.append(claim_loop(self))
        metrics_server = None
        if self.config.metrics_port is not None:
            metrics_server = await serve_metrics(
                self.metrics, self.config.metrics_host, self.config.metrics_port,
                healthz=self.healthz, readyz=self.readyz,
            )
        tasks = [asyncio.create_task(loop) for loop in loops]
        stop_wait = asyncio.create_task(self.stopping.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            if self._stop_by is None:  # a loop failed: the same grace as a stop()
                self._stop_by = time.monotonic() + self.config.shutdown_grace
            self.stopping.set()
            await self._drain()
            await self.finisher.close(within=self._shutdown_left())
            if self.listener is not None:
                self.listener.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, stop_wait, return_exceptions=True)
            if metrics_server is not None:
                metrics_server.close()
            await self.clients.aclose()
            await self.pool.close(timeout=max(self._shutdown_left(), 0.1))
            log.info("worker %s stopped", self.config.worker_id)

    async def healthz(self) -> tuple[bool, str]:
        """Liveness (/healthz): running, and the LISTEN connection is up."""
        if self.listener is not None and self.listener.backend_pid is None:
            return False, "listener not connected"
        return True, "ok"

    async def readyz(self) -> tuple[bool, str]:
        """Readiness (/readyz): a pooled query answers and the schema is there."""
        try:
            rows = await self._fetch(queries.SCHEMA_PRESENT, {})
        except (psycopg.Error, TimeoutError) as exc:
            return False, f"database: {reason(exc)}"
        return (True, "ok") if rows and rows[0][0] else (False, "the chatd schema is missing")

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does): ``run()`` returns
        within ``shutdown_grace`` seconds from now (closing the pool aside)."""
        if self._stop_by is None:
            self._stop_by = time.monotonic() + self.config.shutdown_grace
        self.stopping.set()
        self.wake.set()

    def _shutdown_left(self) -> float:
        """Seconds left of the shutdown grace (the grace itself before a stop)."""
        if self._stop_by is None:
            return self.config.shutdown_grace
        return max(self._stop_by - time.monotonic(), 0.0)

    async def _drain(self) -> None:
        """Let in-flight turns finish within the grace period, then cancel and
        release the rest back to `pending` for another worker. The grace
        bounds the whole shutdown: the turns get all but its last quarter (at
        most ``db_timeout``), which is kept for cancelling and releasing."""
        if not self.turns:
            return
        tasks = [t.task for t in self.turns.values() if t.task]
        log.info("draining %d turn(s), grace %.0fs", len(tasks), self.config.shutdown_grace)
        reserve = min(self.config.db_timeout, self.config.shutdown_grace / 4)
        if tasks:
            await asyncio.wait(tasks, timeout=max(self._shutdown_left() - reserve, 0.0))
        left = [t for t in self.turns.values() if t.task and not t.task.done()]
        for turn in left:
            turn.cancel_reason = "shutdown"
            assert turn.task is not None
            turn.task.cancel()
        cancelled = [t.task for t in left if t.task]
        if cancelled:  # a shielded save may outlive the cancel: not the grace
            await asyncio.wait(cancelled, timeout=max(self._shutdown_left(), 0.01))
        if left:
            await self._release([t.chat_id for t in left])

    async def _release(self, chat_ids: list[UUID]) -> None:
        """release_chats, retried for up to ``db_timeout`` and never past the
        shutdown grace (a turn cancelled while its result could not be
        written is released as soon as the database lets it); then stale
        recovery takes what is left."""
        deadline = time.monotonic() + min(self.config.db_timeout, self._shutdown_left())
        delay = 0.1
        while True:
            try:
                await self._fetch(
                    queries.RELEASE_CHATS, {"worker_id": self.config.worker_id, "chat_ids": chat_ids},
                    deadline=max(deadline - time.monotonic(), 0.01),
                )
                log.info("released %d unfinished turn(s)", len(chat_ids))
                return
            except (psycopg.Error, TimeoutError, LeaseLost) as exc:
                if time.monotonic() + delay >= deadline or not isinstance(
                    exc, (psycopg.OperationalError, TimeoutError)
                ):
                    log.warning("could not release %d turn(s); stale recovery will: %s",
                                len(chat_ids), str(exc).strip() or repr(exc))
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    # ------------------------------------------------------------------ turns and notifications

    def _start_turn(self, claim: Claim) -> None:
        turn = Turn(claim.chat_id, claim.lease)
        self.turns[claim.chat_id] = turn
        self.metrics.inc("chatd_worker_turns_claimed_total")
        if self.listener is not None:
            self.listener.listen(names.chat_channel(claim.chat_id))
        turn.task = asyncio.create_task(TurnRun(self, turn, claim).run(), name=f"turn {claim.chat_id}")
        turn.task.add_done_callback(lambda _t: self._turn_done(turn))

    def _turn_done(self, turn: Turn) -> None:
        if self.turns.get(turn.chat_id) is turn:
            del self.turns[turn.chat_id]
            if self.listener is not None:
                self.listener.unlisten(names.chat_channel(turn.chat_id))
        self.wake.set()

    def _cancel_lost(self, chat_id: UUID, lease: int | None = None) -> bool:
        """Cancels the turn SQL says is no longer ours; False when there is
        nothing to cancel (already ending, or writing its own result)."""
        turn = self.turns.get(chat_id)
        if (turn and turn.task and not turn.task.done() and turn.cancel_reason is None
                and not turn.finishing and (lease is None or lease == turn.lease)):
            turn.cancel_reason = "lost"
            turn.task.cancel()
            return True
        return False

    async def _on_listening(self, _channels: frozenset[str], generation: int) -> None:
        """After the listener (re)connected: NOTIFY is not durable, so rescan
        what may have changed while it was deaf (claims and lost turns)."""
        if generation == self._listener_generation:
            return  # only a channel change on the same connection
        if self._listener_generation:
            self.metrics.inc("chatd_worker_listener_reconnects_total")
        self._listener_generation = generation
        self.wake.set()
        if self.turns:
            try:
                await heartbeat_once(self)
            except (psycopg.Error, TimeoutError, LeaseLost) as exc:
                log_failure(log, "heartbeat after reconnect", exc)
        self.ready.set()

    def _on_notification(self, channel: str, payload: str) -> None:
        if channel == names.WAKE_CHANNEL:
            self.metrics.inc("chatd_worker_wakeups_total")
            self.wake.set()
            return
        try:
            hint = json.loads(payload)
            chat_id = UUID(hint["chat_id"])
        except (ValueError, KeyError, TypeError):
            return
        turn = self.turns.get(chat_id)
        status, lease = hint.get("status"), hint.get("lease")
        if turn is None or status is None or not isinstance(lease, int):
            return
        # Notifications are delivered after the fact: one about an earlier
        # turn of this chat (a smaller lease) may arrive after this worker
        # claimed the chat again, and must not cancel the new turn.
        if lease > turn.lease or (lease == turn.lease and status != "running"):
            # the turn's own finish notifies too: that one cancels (and logs) nothing
            if self._cancel_lost(chat_id, turn.lease):
                log.info("chat %s left running (%s, lease %d): cancelled its turn", chat_id, status, lease)
