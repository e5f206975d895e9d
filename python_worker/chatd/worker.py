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

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from chatd import queries
from chatd.config import WorkerConfig, add_worker_arguments, config_from_args
from chatd.errors import ChatError, ChatErrorKind, ChatTurnError
from chatd.listener import Listener
from chatd.llm import (
    ClientCache,
    Finished,
    ModelSpec,
    PromptMessage,
    ReasoningDelta,
    TextDelta,
    stream_turn,
)
from chatd.logs import setup_logging
from chatd.metrics import Metrics, serve_metrics

__all__ = ["Worker", "WorkerFatal", "add_arguments", "run"]

log = logging.getLogger("chatd.worker")

LEASE_LOST = "CD004"
INVALID_TRANSITION = "CD003"
INVALID_INPUT = "CD007"
# Errors after which reconnecting cannot help: wrong password, no such role or
# database, no pg_hba entry.
_FATAL_CONNECT_HINTS = ("authentication failed", "does not exist", "no pg_hba.conf entry",
                        "password authentication", "permission denied")

StreamFn = Callable[..., Any]

# Content bytes (as JSON text) of the history one turn may load; about the
# size of the largest context windows, far below what would hurt the worker.
MAX_HISTORY_BYTES = 64 * 1024 * 1024

class WorkerFatal(RuntimeError):
    """A condition the worker cannot recover from by retrying."""


class LeaseLost(Exception):
    """SQL refused a write: this worker no longer owns the turn."""


@dataclass
class Turn:
    chat_id: UUID
    lease: int
    task: asyncio.Task[None] | None = None
    # why the worker cancelled the task: "lost" (SQL says it is not ours any
    # more: interrupted, recovered) or "shutdown"
    cancel_reason: str | None = None
    # set once the turn writes its result (finish_turn, record_failure): the
    # notifications of that very write must not cancel it; a lost lease
    # surfaces as the write's own error
    finishing: bool = False


@dataclass
class Claim:
    chat_id: UUID
    lease: int
    attempt: int
    model: Mapping[str, Any]
    messages: Sequence[Mapping[str, Any]]
    # False: acquire_chats returned only the first page of the history
    history_complete: bool = True

    def spec(self) -> ModelSpec:
        provider = self.model["provider"]
        return ModelSpec(
            provider_kind=provider["kind"],
            provider_name=provider["name"],
            base_url=provider.get("base_url"),
            api_key_env=provider.get("api_key_env"),
            model=self.model["model"],
            max_output_tokens=int(self.model["max_output_tokens"]),
        )

    def prompt(self) -> list[PromptMessage]:
        return [PromptMessage(m["role"], m["content"]) for m in self.messages]


@dataclass
class _Output:
    """What a turn has produced so far, and what is not yet published."""

    reasoning: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    pending: list[dict[str, str]] = field(default_factory=list)
    pending_bytes: int = 0

    def add(self, kind: str, delta: str) -> None:
        (self.text if kind == "text" else self.reasoning).append(delta)
        if self.pending and self.pending[-1]["type"] == kind:
            self.pending[-1]["text"] += delta  # coalesce adjacent deltas
        else:
            self.pending.append({"type": kind, "text": delta})
        self.pending_bytes += len(delta.encode())

    def content(self) -> list[dict[str, str]]:
        parts = []
        if self.reasoning:
            parts.append({"type": "reasoning", "text": "".join(self.reasoning)})
        if self.text:
            parts.append({"type": "text", "text": "".join(self.text)})
        return parts


def _usage_json(finished: Finished | None) -> dict[str, int]:
    if finished is None:
        return {}
    usage = finished.usage
    values = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    return {k: v for k, v in values.items() if v is not None}


class BatchFailed(Exception):
    """A batch of finishes failed as a whole (not a lost lease of this turn)."""


class FinishBatcher:
    """Finishes turns in batches with `chatd.finish_turns`: every turn that
    finishes while a batch is in flight joins the next one, so under load one
    statement, one commit and one wake-up of each listener serve many turns,
    and an idle worker adds no wait at all."""

    def __init__(self, worker: Worker, *, max_batch: int = 32, max_in_flight: int = 2) -> None:
        self._worker = worker
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    async def finish(self, item: dict[str, Any]) -> int:
        """The assistant message id; LeaseLost when this turn's lease was
        lost (nothing written); BatchFailed when the batch failed otherwise."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="finish batcher")
        return await future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._batches, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._slots.acquire()
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                task = asyncio.create_task(self._execute(batch))
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)

    async def _execute(self, batch: list[tuple[dict[str, Any], asyncio.Future[int]]]) -> None:
        try:
            rows = await self._worker._fetch(queries.FINISH_TURNS, {"turns": Jsonb([i for i, _ in batch])})
            finished = {str(chat_id): message_id for chat_id, message_id in rows}
            self._worker.metrics.inc("chatd_worker_finish_batches_total")
            for item, future in batch:
                if future.done():
                    continue
                message_id = finished.get(item["chat_id"])
                if message_id is None:
                    future.set_exception(LeaseLost(f"chat {item['chat_id']}: lease {item['lease']} lost"))
                else:
                    future.set_result(message_id)
        except Exception as exc:  # the whole batch: each turn falls back to finishing alone
            for _, future in batch:
                if not future.done():
                    future.set_exception(BatchFailed(f"{type(exc).__name__}: {exc}"))
        finally:
            self._slots.release()


class Worker:
    def __init__(self, config: WorkerConfig, *, stream: StreamFn = stream_turn) -> None:
        self.config = config
        self.stream = stream
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self.turns: dict[UUID, Turn] = {}
        self.metrics = Metrics()
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
            self.listener.listen(queries.WAKE_CHANNEL)
        self._listener_generation = 0
        self.finisher = FinishBatcher(self)
        # A turn whose history (the prompt) is larger fails for good (kind
        # config) instead of being loaded: no chat can exhaust the worker.
        self.max_history_bytes = MAX_HISTORY_BYTES
        self.history_page = 100
        self.ready = asyncio.Event()  # set once LISTEN is armed (or poll-only) and loops run
        self._last_heal = 0.0

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
        try:
            async with asyncio.timeout(deadline or self.config.db_timeout):
                async with self.pool.connection() as conn:
                    cursor = await conn.execute(query, params)
                    return await cursor.fetchall() if cursor.description else []
        except psycopg.OperationalError:
            self._heal_pool()
            raise
        except psycopg.Error as exc:
            if exc.sqlstate == LEASE_LOST:
                raise LeaseLost(str(exc)) from exc
            raise
        except TimeoutError:
            self.metrics.inc("chatd_worker_db_timeouts_total")
            raise

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
                    raise WorkerFatal(f"cannot use the database: {message.strip()}") from exc
                if self.stopping.is_set():
                    raise WorkerFatal("stopped before the database could be reached") from exc
                log.warning("database unreachable, retrying in %.1fs: %s", delay, message.strip())
                await self._sleep_unless_stopping(delay)
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
            kwargs={"autocommit": True, "application_name": f"chatd-worker {self.config.worker_id}"},
            open=False,
            reconnect_timeout=0,  # keep trying; failures surface as per-call timeouts
        )
        await self._pool.open(wait=True, timeout=30)

    async def run(self) -> None:
        await self.connect()
        mode = "passive" if self.config.passive else "poll-only" if self.config.poll_only else "listening"
        log.info("worker %s started (%s, max_chats=%d)", self.config.worker_id, mode, self.config.max_chats)
        loops = [self._heartbeat_loop(), self._maintenance_loop()]
        if self.listener is not None:
            loops.append(self.listener.run())
        else:
            self.ready.set()
        if not self.config.passive:
            loops.append(self._claim_loop())
        metrics_server = None
        if self.config.metrics_port is not None:
            metrics_server = await serve_metrics(self.metrics, self.config.metrics_host, self.config.metrics_port)
        tasks = [asyncio.create_task(loop) for loop in loops]
        stop_wait = asyncio.create_task(self.stopping.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and task.exception():
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stopping.set()
            await self._drain()
            await self.finisher.close()
            if self.listener is not None:
                self.listener.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, stop_wait, return_exceptions=True)
            if metrics_server is not None:
                metrics_server.close()
            await self.clients.aclose()
            await self.pool.close()
            log.info("worker %s stopped", self.config.worker_id)

    def stop(self) -> None:
        """Begin a graceful shutdown (what SIGTERM does)."""
        self.stopping.set()
        self.wake.set()

    async def _drain(self) -> None:
        """Let in-flight turns finish within the grace period, then cancel and
        release the rest back to `pending` for another worker."""
        if not self.turns:
            return
        tasks = [t.task for t in self.turns.values() if t.task]
        log.info("draining %d turn(s), grace %.0fs", len(tasks), self.config.shutdown_grace)
        await asyncio.wait(tasks, timeout=self.config.shutdown_grace)
        left = [t for t in self.turns.values() if t.task and not t.task.done()]
        for turn in left:
            turn.cancel_reason = "shutdown"
            assert turn.task is not None
            turn.task.cancel()
        await asyncio.gather(*(t.task for t in left if t.task), return_exceptions=True)
        if left:
            try:
                await self._fetch(
                    queries.RELEASE_CHATS,
                    {"worker_id": self.config.worker_id, "chat_ids": [t.chat_id for t in left]},
                )
                log.info("released %d unfinished turn(s)", len(left))
            except (psycopg.Error, TimeoutError, LeaseLost) as exc:
                log.warning("could not release %d turn(s); stale recovery will: %s", len(left), exc)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    # ------------------------------------------------------------------ loops

    async def _claim_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            self.wake.clear()  # before claiming: a wake during the claim is kept
            room = self.config.max_chats - len(self.turns)
            if room > 0:
                try:
                    rows = await self._fetch(
                        queries.ACQUIRE_CHATS, {"worker_id": self.config.worker_id, "limit": room}
                    )
                    failures = 0
                except (psycopg.Error, TimeoutError) as exc:
                    failures += 1
                    log.warning("claim failed: %s", exc)
                    await self._sleep_unless_stopping(min(0.1 * 2**failures, 5.0))
                    continue
                for row in rows:
                    self._start_turn(Claim(*row))
                if rows and len(rows) == room:
                    pass  # full: a finishing turn sets wake
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_interval):
                    await self.wake.wait()

    def _start_turn(self, claim: Claim) -> None:
        turn = Turn(claim.chat_id, claim.lease)
        self.turns[claim.chat_id] = turn
        self.metrics.inc("chatd_worker_turns_claimed_total")
        if self.listener is not None:
            self.listener.listen(queries.chat_channel(claim.chat_id))
        turn.task = asyncio.create_task(self._run_turn(turn, claim), name=f"turn {claim.chat_id}")
        turn.task.add_done_callback(lambda _t: self._turn_done(turn))

    def _turn_done(self, turn: Turn) -> None:
        if self.turns.get(turn.chat_id) is turn:
            del self.turns[turn.chat_id]
            if self.listener is not None:
                self.listener.unlisten(queries.chat_channel(turn.chat_id))
        self.wake.set()

    def _cancel_lost(self, chat_id: UUID, lease: int | None = None) -> None:
        turn = self.turns.get(chat_id)
        if (turn and turn.task and not turn.task.done() and turn.cancel_reason is None
                and not turn.finishing and (lease is None or lease == turn.lease)):
            turn.cancel_reason = "lost"
            turn.task.cancel()

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
                await self._heartbeat_once()
            except (psycopg.Error, TimeoutError, LeaseLost) as exc:
                log.warning("heartbeat after reconnect failed: %s", exc)
        self.ready.set()

    def _on_notification(self, channel: str, payload: str) -> None:
        if channel == queries.WAKE_CHANNEL:
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
            log.info("chat %s left running (%s, lease %d): cancelling its turn", chat_id, status, lease)
            self._cancel_lost(chat_id, turn.lease)

    async def _heartbeat_once(self) -> None:
        turns = [t for t in self.turns.values() if t.task and not t.task.done()]
        if not turns:
            return
        rows = await self._fetch(
            queries.HEARTBEAT,
            {
                "worker_id": self.config.worker_id,
                "chat_ids": [t.chat_id for t in turns],
                "leases": [t.lease for t in turns],
            },
        )
        self.metrics.inc("chatd_worker_heartbeats_total")
        for (chat_id,) in rows:
            log.info("chat %s is no longer ours: cancelling its turn", chat_id)
            self._cancel_lost(chat_id)

    async def _heartbeat_loop(self) -> None:
        while not self.stopping.is_set():
            await self._sleep_unless_stopping(self.heartbeat_interval)
            try:
                await self._heartbeat_once()
            except (psycopg.Error, TimeoutError, LeaseLost) as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _maintenance_loop(self) -> None:
        next_janitor = 0.0
        while not self.stopping.is_set():
            try:
                rows = await self._fetch(queries.RECOVER_STALE_CHATS, {})
                recovered = rows[0][0] if rows else 0
                if recovered:
                    log.info("recovered %d stale chat(s)", recovered)
                    self.metrics.inc("chatd_worker_recovered_total", recovered)
                if time.monotonic() >= next_janitor:
                    await self._fetch(queries.JANITOR, {})
                    next_janitor = time.monotonic() + self.config.janitor_interval
            except (psycopg.Error, TimeoutError) as exc:
                log.warning("maintenance failed: %s", exc)
            await self._sleep_unless_stopping(self.config.recover_interval)

    # ------------------------------------------------------------------ one turn

    async def _run_turn(self, turn: Turn, claim: Claim) -> None:
        output = _Output()
        seq = 0
        flush_lock = asyncio.Lock()
        last_flush = time.monotonic()
        started = time.monotonic()
        finished: Finished | None = None
        base = {"chat_id": claim.chat_id, "lease": claim.lease}

        async def flush() -> None:
            nonlocal seq, last_flush
            async with flush_lock:
                last_flush = time.monotonic()
                if not output.pending:
                    return
                parts, size = output.pending, output.pending_bytes
                output.pending, output.pending_bytes = [], 0
                try:
                    await self._fetch(queries.PUBLISH_PARTS, {**base, "seq": seq, "parts": Jsonb(parts)})
                except (psycopg.Error, TimeoutError) as exc:
                    # keep the parts for the next flush; the final message is what counts
                    output.pending[:0], output.pending_bytes = parts, output.pending_bytes + size
                    log.warning("publish_parts failed for chat %s: %s", claim.chat_id, exc)
                    return
                seq += 1
                self.metrics.inc("chatd_worker_part_flushes_total")

        async def flush_stragglers() -> None:
            while True:
                await asyncio.sleep(self.config.flush_interval)
                if output.pending and time.monotonic() - last_flush >= self.config.flush_interval:
                    await flush()

        def result(finished: Finished | None) -> dict[str, Any]:
            return {
                **base,
                "content": Jsonb(output.content()),
                "usage": Jsonb(_usage_json(finished)),
                "provider_response_id": finished.response_id if finished else None,
                "runtime_ms": int((time.monotonic() - started) * 1000),
            }

        straggler: asyncio.Task[None] | None = None
        try:
            if not claim.history_complete:
                await self._load_history(claim)
            straggler = asyncio.create_task(flush_stragglers())
            try:
                async for event in self.stream(
                    claim.spec(), claim.prompt(), startup_timeout=self.startup_timeout,
                    clients=self.clients,
                ):
                    if isinstance(event, TextDelta):
                        output.add("text", event.text)
                    elif isinstance(event, ReasoningDelta):
                        output.add("reasoning", event.text)
                    elif isinstance(event, Finished):
                        finished = event
                    if output.pending_bytes >= self.config.flush_bytes or (
                        output.pending and time.monotonic() - last_flush >= self.config.flush_interval
                    ):
                        await flush()
            finally:
                straggler.cancel()
            if finished is None:  # a stream adapter must raise instead; never save as success
                raise ChatTurnError(ChatError(
                    "stream closed before the response completed", ChatErrorKind.timeout,
                    claim.spec().provider_name, True,
                ))
            turn.finishing = True
            final = result(finished)
            if not await self._publish_and_finish(flush_lock, output, seq, final, claim):
                await flush()
                await self._write_result(queries.FINISH_TURN, final, claim)
            self.metrics.inc("chatd_worker_turns_finished_total")
        except ChatTurnError as failure:
            turn.finishing = True
            await self._record_failure(claim, failure.error)
        except LeaseLost:
            # A write was fenced off: interrupted or taken away. SQL decides
            # whether the partial message may still be saved under this lease.
            log.info("chat %s: lease %d lost", claim.chat_id, claim.lease)
            self.metrics.inc("chatd_worker_leases_lost_total")
            if output.content():
                await self._save_interrupted(result(finished), claim)
        except asyncio.CancelledError:
            if turn.cancel_reason == "lost":
                # Interrupted (or taken away): SQL decides whether the partial
                # message may still be saved under this lease.
                if output.content():
                    await self._save_interrupted(result(finished), claim)
                return
            raise
        except Exception as exc:  # a bug or an unexpected library error: retry the turn
            log.exception("chat %s: unexpected error in turn", claim.chat_id)
            await self._record_failure(claim, ChatError(
                f"worker error: {type(exc).__name__}: {exc}"[:500], ChatErrorKind.generic,
                claim.spec().provider_name, True,
            ))

    async def _load_history(self, claim: Claim) -> None:
        """Reads the rest of the history after acquire_chats' first page,
        page by page (turn_history). A history over max_history_bytes, or one
        chatd cannot return, fails this turn for good (kind config); other
        chats are not affected. A lost lease raises LeaseLost."""
        messages = list(claim.messages)
        loaded = sum(len(json.dumps(m.get("content"))) for m in messages)
        provider = claim.spec().provider_name
        while True:
            after = int(messages[-1]["id"]) if messages else 0
            try:
                rows = await self._fetch(queries.TURN_HISTORY, {
                    "worker_id": self.config.worker_id, "chat_id": claim.chat_id, "lease": claim.lease,
                    "after_id": after, "limit": self.history_page,
                })
            except (psycopg.OperationalError, TimeoutError) as exc:
                raise ChatTurnError(ChatError(
                    f"could not read the chat history: {exc}"[:500], ChatErrorKind.generic, provider, True,
                )) from exc
            except psycopg.Error as exc:
                raise ChatTurnError(ChatError(
                    f"chatd could not return the chat history: {exc.diag.message_primary or exc}"[:500],
                    ChatErrorKind.config, provider, False,
                )) from exc
            if not rows:
                claim.messages, claim.history_complete = messages, True
                return
            for message_id, role, content, size in rows:
                loaded += int(size)
                if loaded > self.max_history_bytes:
                    raise ChatTurnError(ChatError(
                        f"the chat history is larger than this worker's limit of {self.max_history_bytes} "
                        "bytes: start a new chat or edit an earlier message",
                        ChatErrorKind.config, provider, False,
                    ))
                messages.append({"id": message_id, "role": role, "content": content})

    async def _publish_and_finish(
        self, flush_lock: asyncio.Lock, output: _Output, seq: int, final: Mapping[str, Any], claim: Claim
    ) -> bool:
        """The last streamed parts and finish_turn, batched with the other
        turns finishing now (FinishBatcher): one statement and one commit for
        all of them. False when the batch failed with anything but this turn's
        lost lease: the caller then takes the two-step path (flush, then
        finish_turn with its retries), which handles every outcome."""
        async with flush_lock:  # a straggler flush may be in flight
            parts, size = output.pending, output.pending_bytes
            output.pending, output.pending_bytes = [], 0
        item: dict[str, Any] = {
            "chat_id": str(claim.chat_id),
            "lease": claim.lease,
            "content": final["content"].obj,
            "usage": final["usage"].obj,
            "provider_response_id": final["provider_response_id"],
            "runtime_ms": final["runtime_ms"],
        }
        if parts:
            item.update(seq=seq, parts=parts)
        try:
            await self.finisher.finish(item)
        except BatchFailed as exc:
            log.info("chat %s: batched finish failed, finishing alone: %s", claim.chat_id, exc)
            output.pending[:0], output.pending_bytes = parts, output.pending_bytes + size
            return False
        if parts:
            self.metrics.inc("chatd_worker_part_flushes_total")
        return True

    async def _write_result(self, query: str, params: Mapping[str, Any], claim: Claim) -> None:
        """finish_turn, retried on transient database errors. A retry that
        finds the turn gone (lease lost) means an earlier attempt committed or
        the turn was taken away: either way there is nothing left to write."""
        for attempt in range(4):
            try:
                await self._fetch(query, params)
                return
            except psycopg.Error as exc:
                if exc.sqlstate == INVALID_INPUT:
                    # the same reply would be refused again: fail the turn for good
                    raise ChatTurnError(ChatError(
                        f"chatd could not store the reply: {exc.diag.message_primary or exc}",
                        ChatErrorKind.generic, claim.spec().provider_name, False,
                    )) from exc
                if exc.sqlstate == INVALID_TRANSITION:
                    # interrupted between the last part and the finish
                    await self._save_interrupted(params, claim)
                    return
                if exc.sqlstate is not None and not isinstance(exc, psycopg.OperationalError):
                    raise
                log.warning("finish_turn for chat %s failed (attempt %d): %s", claim.chat_id, attempt + 1, exc)
            except TimeoutError:
                log.warning("finish_turn for chat %s timed out (attempt %d)", claim.chat_id, attempt + 1)
            await asyncio.sleep(0.2 * 2**attempt)
        log.error("chat %s: could not write the turn's result; stale recovery will re-run it", claim.chat_id)

    async def _save_interrupted(self, params: Mapping[str, Any], claim: Claim) -> None:
        # Shielded: a shutdown cancelling the turn again must not cut the save short.
        save = asyncio.ensure_future(self._fetch(queries.SAVE_INTERRUPTED_TURN, params))
        save.add_done_callback(lambda t: t.cancelled() or t.exception())  # always retrieved
        try:
            await asyncio.shield(save)
            self.metrics.inc("chatd_worker_turns_interrupted_total")
        except (LeaseLost, psycopg.Error, TimeoutError) as exc:
            log.info("chat %s: partial message not saved: %s", claim.chat_id, exc)

    async def _record_failure(self, claim: Claim, error: ChatError) -> None:
        self.metrics.inc("chatd_worker_turn_failures_total")
        try:
            rows = await self._fetch(
                queries.RECORD_FAILURE,
                {
                    "chat_id": claim.chat_id, "lease": claim.lease,
                    "error": Jsonb(error.to_json()), "retry_after_ms": error.retry_after_ms,
                },
            )
            if rows:
                status, attempt, next_at = rows[0]
                log.info("chat %s: %s (%s) -> %s, attempt %s, next at %s", claim.chat_id,
                         error.kind, error.message, status, attempt, next_at)
        except LeaseLost:
            log.info("chat %s: lease lost before the failure was recorded", claim.chat_id)
        except (psycopg.Error, TimeoutError) as exc:
            log.error("chat %s: could not record failure %s: %s", claim.chat_id, error.kind, exc)


# ---------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a chatd worker: claim runnable chats, call their LLM, stream the output and "
        "write the result back through chatd's SQL functions. SIGTERM drains gracefully."
    )
    add_worker_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"chatd worker: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, config.log_format)
    return asyncio.run(_main(config))


async def _main(config: WorkerConfig) -> int:
    worker = Worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    except WorkerFatal as exc:
        log.error("%s", exc)
        print(f"chatd worker: {exc}", file=sys.stderr)
        return 1
    return 0
