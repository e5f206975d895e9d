"""The finish batcher: every turn that finishes while a batch is in flight
joins the next `chatd.finish_turns` call. It knows nothing of the Worker: it
is given the statement runner (``fetch``) and the metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from psycopg.types.json import Jsonb

from chatd.metrics import Metrics
from chatd.protocol import queries
from chatd.protocol.errors import LeaseLost

__all__ = ["BatchFailed", "FetchFn", "FinishBatcher"]

#: Runs one statement and returns its rows (Worker._fetch).
FetchFn = Callable[[str, Mapping[str, Any]], Awaitable[list[Any]]]


class BatchFailed(Exception):
    """A batch of finishes failed as a whole (not a lost lease of this turn)."""


class FinishBatcher:
    """Finishes turns in batches with `chatd.finish_turns`: every turn that
    finishes while a batch is in flight joins the next one, so under load one
    statement, one commit and one wake-up of each listener serve many turns,
    and an idle worker adds no wait at all."""

    def __init__(
        self, fetch: FetchFn, metrics: Metrics, *, max_batch: int = 32, max_in_flight: int = 2
    ) -> None:
        self._fetch = fetch
        self._metrics = metrics
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

    async def close(self, within: float | None = None) -> None:
        """Stop batching; wait for the batches in flight, at most ``within``
        seconds (the rest of the shutdown grace), then cancel them."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        batches = list(self._batches)
        if batches:
            _, late = await asyncio.wait(batches, timeout=within)
            for task in late:
                task.cancel()
            await asyncio.gather(*batches, return_exceptions=True)

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
            rows = await self._fetch(queries.FINISH_TURNS, {"turns": Jsonb([i for i, _ in batch])})
            finished = {str(chat_id): message_id for chat_id, message_id in rows}
            self._metrics.inc("chatd_worker_finish_batches_total")
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
            for _, future in batch:  # cancelled by close(): no turn waits forever
                if not future.done():
                    future.set_exception(BatchFailed("the worker is shutting down"))
            self._slots.release()
