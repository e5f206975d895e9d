"""The worker's loops, each a function of the Worker: claim (race the wake
event against the poll interval, claim what fits), heartbeat (one batched
statement; cancel what SQL says is no longer ours) and maintenance
(recover_stale_chats, janitor)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import psycopg

from chatd.logs import log_failure
from chatd.protocol import queries
from chatd.protocol.errors import LeaseLost
from chatd.worker.turn import Claim

if TYPE_CHECKING:
    from chatd.worker.worker import Worker

__all__ = ["claim_loop", "heartbeat_loop", "heartbeat_once", "maintenance_loop"]

log = logging.getLogger("chatd.worker")


async def claim_loop(worker: Worker) -> None:
    failures = 0
    while not worker.stopping.is_set():
        worker.wake.clear()  # before claiming: a wake during the claim is kept
        room = worker.config.max_chats - len(worker.turns)
        if room > 0:
            try:
                rows = await worker._fetch(
                    queries.ACQUIRE_CHATS, {"worker_id": worker.config.worker_id, "limit": room}
                )
                failures = 0
            except (psycopg.Error, TimeoutError) as exc:
                failures += 1
                log_failure(log, "claim", exc)
                await worker.sleep_unless_stopping(min(0.1 * 2**failures, 5.0))
                continue
            if rows:
                worker.metrics.claim_batch.observe(len(rows))
            for row in rows:
                worker._start_turn(Claim(*row))
            if rows and len(rows) == room:
                pass  # full: a finishing turn sets wake
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(worker.config.poll_interval):
                await worker.wake.wait()


async def heartbeat_once(worker: Worker) -> None:
    turns = [t for t in worker.turns.values() if t.task and not t.task.done()]
    if not turns and worker.config.passive:
        return  # an idle worker heartbeats too: chatd.heartbeat releases its orphans
    rows = await worker._fetch(
        queries.HEARTBEAT,
        {
            "worker_id": worker.config.worker_id,
            "chat_ids": [t.chat_id for t in turns],
            "leases": [t.lease for t in turns],
        },
    )
    worker.metrics.inc("chatd_worker_heartbeats_total")
    for (chat_id,) in rows:
        # a turn writing its own result is reported too: nothing to cancel or log
        if worker._cancel_lost(chat_id):
            log.info("chat %s is no longer ours: cancelled its turn", chat_id)


async def heartbeat_loop(worker: Worker) -> None:
    while not worker.stopping.is_set():
        await worker.sleep_unless_stopping(worker.heartbeat_interval)
        try:
            await heartbeat_once(worker)
        except (psycopg.Error, TimeoutError, LeaseLost) as exc:
            log_failure(log, "heartbeat", exc)


async def maintenance_loop(worker: Worker) -> None:
    """recover_stale_chats() every recover_interval and janitor() every
    janitor_interval, each on its own schedule."""
    next_recover = next_janitor = 0.0
    while not worker.stopping.is_set():
        now = time.monotonic()
        if now >= next_recover:
            next_recover = now + worker.config.recover_interval
            try:
                rows = await worker._fetch(queries.RECOVER_STALE_CHATS, {})
                recovered = rows[0][0] if rows else 0
                if recovered:
                    log.info("recovered %d stale chat(s)", recovered)
                    worker.metrics.inc("chatd_worker_recovered_total", recovered)
            except (psycopg.Error, TimeoutError) as exc:
                log_failure(log, "recover_stale_chats", exc)
        if now >= next_janitor:
            next_janitor = now + worker.config.janitor_interval
            try:
                await worker._fetch(queries.JANITOR, {})
                worker.metrics.inc("chatd_worker_janitor_runs_total")
            except (psycopg.Error, TimeoutError) as exc:
                log_failure(log, "janitor", exc)
        await worker.sleep_unless_stopping(max(min(next_recover, next_janitor) - time.monotonic(), 0.0))
