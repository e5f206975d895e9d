"""One turn of one chat: what was claimed (`Claim`), its bookkeeping in the
worker (`Turn`), and `TurnRun`, which streams it, flushes its parts and
writes its result back (finish, failure, or the partial message)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from chatd.llm import (
    ChatError,
    ChatErrorKind,
    ChatTurnError,
    Finished,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolSpec,
    estimate_usage,
)
from chatd.logs import bind, log_failure, reason
from chatd.protocol import names, queries
from chatd.protocol.errors import LeaseLost
from chatd.worker.claim import Claim, Turn
from chatd.worker.context import compact
from chatd.worker.finish import BatchFailed
from chatd.worker.history import load_history
from chatd.worker.output import Output as _Output
from chatd.worker.output import usage_json as _usage_json
from chatd.worker.tools import ToolLoop

if TYPE_CHECKING:
    from chatd.worker.worker import Worker

__all__ = ["Claim", "Turn", "TurnRun"]

log = logging.getLogger("chatd.worker")

#: Longest wait between two attempts to write a turn's result.
WRITE_RETRY_CAP = 5.0


class TurnRun:
    """One turn: stream from the LLM, publish parts (at most one flush per
    ``flush_interval``, or early at ``flush_bytes``), then finish through the
    batcher, or record the failure, or save the partial message when the
    lease is lost. It writes only through ``worker._fetch``."""

    def __init__(self, worker: Worker, turn: Turn, claim: Claim) -> None:
        self.worker = worker
        self.turn = turn
        self.claim = claim
        self.output = _Output()
        self.seq = 0
        self.flush_lock = asyncio.Lock()
        self.last_flush = time.monotonic()
        self.started = time.monotonic()  # of the current model step (runtime_ms)
        self.turn_started = self.started
        self.finished: Finished | None = None
        self.base = {"chat_id": claim.chat_id, "lease": claim.lease}
        self.tools: list[ToolSpec] = []
        self.flusher: asyncio.Task[None] | None = None  # the one flush in flight

    def flush_soon(self) -> None:
        """Start a flush beside the stream unless one is in flight: a stalled
        database never stalls the LLM stream (a failed flush keeps its parts
        pending). Raises what the last flush could not handle (a lost lease)."""
        last = self.flusher
        if last is not None and last.done() and not last.cancelled() and (exc := last.exception()):
            raise exc
        if last is None or last.done():
            self.flusher = asyncio.create_task(self.flush(), name=f"flush {self.claim.chat_id}")
            self.flusher.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved

    def elapsed(self) -> float:
        return time.monotonic() - self.turn_started

    async def flush(self) -> None:
        output, claim = self.output, self.claim
        async with self.flush_lock:
            self.last_flush = time.monotonic()
            if not output.pending:
                return
            parts, size = output.pending, output.pending_bytes
            output.pending, output.pending_bytes = [], 0
            try:
                await self.worker._fetch(
                    queries.PUBLISH_PARTS, {**self.base, "seq": self.seq, "parts": Jsonb(parts)}
                )
            except (psycopg.Error, TimeoutError) as exc:
                # keep the parts for the next flush; the final message is what counts
                output.pending[:0], output.pending_bytes = parts, output.pending_bytes + size
                log_failure(log, f"publish_parts for chat {claim.chat_id}", exc)
                return
            self.seq += 1
            self.worker.metrics.published(len(parts))

    async def flush_stragglers(self) -> None:
        interval = self.worker.config.flush_interval
        while True:
            await asyncio.sleep(interval)
            if self.output.pending and time.monotonic() - self.last_flush >= interval:
                with contextlib.suppress(Exception):  # the stream raises it at its next event
                    self.flush_soon()

    def result(self, finished: Finished | None) -> dict[str, Any]:
        # A turn cut before the provider's usage (interrupted) is billed from
        # an estimate: the prompt and what was streamed (messages.usage_estimated).
        usage = finished or Finished(
            estimate_usage(self.claim.prompt(), sum(map(len, self.output.text + self.output.reasoning))),
            None, None,
        )
        return {
            **self.base,
            "content": Jsonb(self.output.content()),
            "usage": Jsonb(_usage_json(usage)),
            "provider_response_id": finished.response_id if finished else None,
            "runtime_ms": int((time.monotonic() - self.started) * 1000),
            # why the step stopped (messages.finish_reason); NULL when interrupted
            "finish_reason": (finished.stop or "other") if finished else None,
        }

    async def stream(self) -> None:
        """Stream the LLM's events into the output, flushing as they come."""
        worker, claim, output, config = self.worker, self.claim, self.output, self.worker.config
        straggler = asyncio.create_task(self.flush_stragglers())
        tools = {"tools": self.tools} if self.tools else {}
        try:
            async for event in worker.stream(
                claim.spec(), claim.prompt(), startup_timeout=worker.startup_timeout,
                idle_timeout=config.idle_timeout, clients=worker.clients, **tools,
            ):
                if isinstance(event, (TextDelta, ReasoningDelta)) and not (output.text or output.reasoning):
                    worker.metrics.first_token.labels(claim.spec().provider_name).observe(self.elapsed())
                if isinstance(event, TextDelta):
                    output.add("text", event.text)
                elif isinstance(event, ReasoningDelta):
                    output.add("reasoning", event.text)
                elif isinstance(event, ReasoningSignature):
                    output.seal(signature=event.signature)
                elif isinstance(event, RedactedReasoning):
                    output.seal(redacted=event.data)
                elif isinstance(event, ToolCallStart | ToolCallDelta):
                    output.add_call(event)
                elif isinstance(event, Finished):
                    self.finished = event
                if output.pending_bytes >= config.flush_bytes or (
                    output.pending and time.monotonic() - self.last_flush >= config.flush_interval
                ):
                    self.flush_soon()
        except BaseException:
            if self.flusher is not None:  # the turn ends here: its parts no longer matter
                self.flusher.cancel()
            raise
        finally:
            straggler.cancel()

    async def steps(self, loop: ToolLoop | None) -> Finished | None:
        """Model steps until one ends without tool calls (its Finished), or
        None when SQL ended the turn at a tool step (requires_action, step
        limit). Each tool step is committed, its calls run (ToolLoop)."""
        if loop is not None:
            self.tools = await loop.specs()
            if not await loop.resume():
                return None
        retried = False
        while True:
            try:
                await self.stream()
            except ChatTurnError as failure:
                # the prompt did not fit the model's window: one compaction
                # and one retry of the step (docs/context.md); a second fails
                if failure.error.kind != ChatErrorKind.context_length or retried:
                    raise
                retried = True
                if not await compact(self, force=True):
                    raise
                self.output, self.finished, self.started = _Output(), None, time.monotonic()
                continue
            finished = self.finished
            if finished is None:  # a stream adapter must raise instead; never save as success
                raise ChatTurnError(ChatError(
                    "stream closed before the response completed", ChatErrorKind.timeout,
                    self.claim.spec().provider_name, True,
                ))
            if loop is None or not self.output.calls.calls:
                return finished
            await self.flush()
            content = [*self.output.content(), *self.output.calls.parts(loop.source_of)]
            final = self.result(finished)
            self.output, self.finished, self.started = _Output(), None, time.monotonic()
            if not await loop.step(content, final):
                return None

    async def run(self) -> None:
        turn, claim = self.turn, self.claim
        loop = ToolLoop(self, claim.tools) if claim.tools else None
        bind(chat_id=str(claim.chat_id), lease=claim.lease,
             provider=(claim.model.get("provider") or {}).get("name"))
        try:
            if not claim.history_complete:
                await load_history(self.worker, claim)
            if claim.context and claim.context.get("compact"):
                await compact(self, force=False)
            finished = await self.steps(loop)
            if finished is None:
                return
            turn.finishing = True
            final = self.result(finished)
            if not await self._finish_batched(final):
                await self._write_result(queries.FINISH_TURN, final, claim)
            self.worker.metrics.turn_ended("finished", self.elapsed())
        except ChatTurnError as failure:
            turn.finishing = True
            await self._record_failure(claim, failure.error)
        except LeaseLost:
            # A write was fenced off: interrupted or taken away. SQL decides
            # whether the partial message may still be saved under this lease.
            log.info("chat %s: lease %d lost", claim.chat_id, claim.lease)
            self.worker.metrics.inc("chatd_worker_leases_lost_total")
            self.worker.metrics.turn_ended("lost", self.elapsed())
            if self.output.content():
                await self._save_interrupted(self.result(self.finished), claim)
        except asyncio.CancelledError:
            if turn.cancel_reason == "lost":
                # Interrupted (or taken away): SQL decides whether the partial
                # message may still be saved under this lease.
                if self.output.content():
                    await self._save_interrupted(self.result(self.finished), claim)
                return
            raise
        except Exception as exc:  # a bug or an unexpected library error: retry the turn
            log.exception("chat %s: unexpected error in turn", claim.chat_id)
            await self._record_failure(claim, ChatError(
                f"worker error: {type(exc).__name__}: {exc}"[:500], ChatErrorKind.generic,
                claim.spec().provider_name, True,
            ))
        finally:
            if loop is not None:
                await loop.aclose()

    async def _finish_batched(self, final: Mapping[str, Any]) -> bool:
        """finish_turn, batched with the other turns finishing now
        (FinishBatcher): one statement and one commit for all of them. The
        parts not yet published are dropped, not published: the final
        message, committed with the status in the same transaction, holds
        everything they would show (a stream_parts row and a notification
        per turn saved; docs/benchmarks.md). False when the batch failed with
        anything but this turn's lost lease: the caller then takes the
        one-by-one path (finish_turn with its retries), which handles every
        outcome."""
        claim = self.claim
        item: dict[str, Any] = {
            "chat_id": str(claim.chat_id),
            "lease": claim.lease,
            "content": final["content"].obj,
            "usage": final["usage"].obj,
            "provider_response_id": final["provider_response_id"],
            "runtime_ms": final["runtime_ms"],
            "finish_reason": final["finish_reason"],
        }
        async with self.flush_lock:  # a straggler flush may be in flight
            self.output.pending, self.output.pending_bytes = [], 0
        try:
            await self.worker.finisher.finish(item)
        except BatchFailed as exc:
            log.info("chat %s: batched finish failed, finishing alone: %s", claim.chat_id, exc)
            return False
        return True

    async def _write_result(self, query: str, params: Mapping[str, Any], claim: Claim) -> None:
        """finish_turn, retried with capped backoff on transient errors as
        long as it takes: the turn stays in ``worker.turns``, so the heartbeat
        keeps reporting the chat; a shutdown cancels it after the grace and
        releases the chat. A lost lease on a retry: nothing left to write."""
        failures = 0
        while True:
            try:
                await self.worker._fetch(query, params)
                break
            except psycopg.Error as exc:
                if exc.sqlstate == names.INVALID_INPUT:
                    # the same reply would be refused again: fail the turn for good
                    raise ChatTurnError(ChatError(
                        f"chatd could not store the reply: {exc.diag.message_primary or exc}",
                        ChatErrorKind.generic, claim.spec().provider_name, False,
                    )) from exc
                if exc.sqlstate == names.INVALID_TRANSITION:
                    # interrupted between the last part and the finish
                    await self._save_interrupted(params, claim)
                    return
                if exc.sqlstate is not None and not isinstance(exc, psycopg.OperationalError):
                    raise
                failures = await self._write_failed("finish_turn", claim, failures, exc)
            except TimeoutError as exc:
                failures = await self._write_failed("finish_turn", claim, failures, exc)
        if failures:
            log.info("chat %s: finish_turn written after %d failed attempt(s)", claim.chat_id, failures)

    async def _write_failed(self, what: str, claim: Claim, failures: int, exc: BaseException) -> int:
        """Counts and logs one failed write (a warning for the first of a row,
        then debug), sleeps the capped backoff and returns the new count."""
        self.worker.metrics.inc("chatd_worker_write_retries_total")
        log.debug("%s for chat %s failed, retrying until it is written: %s", what, claim.chat_id, reason(exc))
        await asyncio.sleep(min(0.2 * 2**failures, WRITE_RETRY_CAP))
        return failures + 1

    async def _save_interrupted(self, params: Mapping[str, Any], claim: Claim) -> None:
        # Shielded: a shutdown cancelling the turn again must not cut the save short.
        save = asyncio.ensure_future(self.worker._fetch(queries.SAVE_INTERRUPTED_TURN, params))
        save.add_done_callback(lambda t: t.cancelled() or t.exception())  # always retrieved
        try:
            await asyncio.shield(save)
            self.worker.metrics.turn_ended("interrupted", self.elapsed())
        except (LeaseLost, psycopg.Error, TimeoutError) as exc:
            log.info("chat %s: partial message not saved: %s", claim.chat_id, exc)

    async def _record_failure(self, claim: Claim, error: ChatError, *, fallback: bool = False) -> None:
        """record_failure, retried like finish_turn on transient errors (the
        chat stays reported by the heartbeat meanwhile)."""
        if not fallback:
            self.worker.metrics.failure(error.kind, error.provider)
            self.worker.metrics.turn_ended("failed", self.elapsed())
        failures = 0
        while True:
            try:
                rows = await self.worker._fetch(
                    queries.RECORD_FAILURE,
                    {
                        "chat_id": claim.chat_id, "lease": claim.lease,
                        "error": Jsonb(error.to_json()), "retry_after_ms": error.retry_after_ms,
                    },
                )
                if rows:
                    status, attempt, next_at, due_in = rows[0]
                    if str(status) == "pending" and due_in is not None:
                        # wake the claim loop when the retry is due, not at the next
                        # poll (10 ms late, so acquire_chats surely finds it due)
                        asyncio.get_running_loop().call_later(
                            max(0.0, float(due_in)) + 0.01, self.worker.wake.set
                        )
                    log.info("chat %s: %s (%s) -> %s, attempt %s, next at %s", claim.chat_id,
                             error.kind, error.message, status, attempt, next_at,
                             extra={"error_kind": str(getattr(error.kind, "value", error.kind))})
                return
            except LeaseLost:
                log.info("chat %s: lease lost before the failure was recorded", claim.chat_id)
                return
            except psycopg.Error as exc:
                if exc.sqlstate is None or isinstance(exc, psycopg.OperationalError):
                    failures = await self._write_failed("record_failure", claim, failures, exc)
                    continue
                log.error("chat %s: could not record failure %s: %s", claim.chat_id, error.kind, reason(exc))
                if exc.sqlstate == names.INVALID_INPUT and not fallback:
                    # chatd refused the ChatError (CD007): record a minimal valid one
                    # instead, so the chat never stays running under a live worker
                    await self._record_failure(claim, ChatError(
                        error.message[:500] or "turn failed", ChatErrorKind.generic, None, bool(error.retryable),
                        detail=f"chatd refused the original error: {exc.diag.message_primary or exc}"[:2000],
                    ), fallback=True)
                # anything else: the heartbeat stops reporting the chat once this
                # turn ends, and chatd.heartbeat releases it (docs/state-machine.md)
                return
            except TimeoutError as exc:
                failures = await self._write_failed("record_failure", claim, failures, exc)
