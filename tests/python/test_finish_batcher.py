"""FinishBatcher: turns finishing while a batch is in flight share the next
statement; a lost lease fails only its own turn; a failed batch sends every
turn back to finishing alone. Driven by a stand-in database call, with explicit
gates (no timing)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest

from chatd.metrics import Metrics
from chatd.worker import BatchFailed, FinishBatcher, LeaseLost


class StandIn:
    """The part of Worker the batcher uses: _fetch and metrics."""

    def __init__(self, lost: set[str] = frozenset(), fail: bool = False) -> None:  # type: ignore[assignment]
        self.metrics = Metrics()
        self.batches: list[list[str]] = []
        self.first_started = asyncio.Event()
        self.release_first = asyncio.Event()
        self.lost = lost
        self.fail = fail

    async def _fetch(self, _query: str, params: dict[str, Any]) -> list[tuple[UUID, int | None]]:
        items = params["turns"].obj
        self.batches.append([item["chat_id"] for item in items])
        if len(self.batches) == 1:
            self.first_started.set()
            await self.release_first.wait()
        if self.fail:
            raise RuntimeError("the batch statement failed")
        return [(UUID(i["chat_id"]), None if i["chat_id"] in self.lost else 100 + i["lease"]) for i in items]


def turn(n: int) -> dict[str, Any]:
    return {"chat_id": str(UUID(int=n)), "lease": n}


async def test_turns_finishing_during_a_batch_share_the_next_one() -> None:
    db = StandIn()
    batcher = FinishBatcher(db._fetch, db.metrics, max_in_flight=1)  # type: ignore[arg-type]
    first = asyncio.create_task(batcher.finish(turn(1)))
    await db.first_started.wait()
    later = [asyncio.create_task(batcher.finish(turn(n))) for n in (2, 3, 4)]
    await asyncio.sleep(0)  # let them enqueue behind the in-flight batch
    db.release_first.set()
    assert await first == 101
    assert await asyncio.gather(*later) == [102, 103, 104]
    assert db.batches == [[turn(1)["chat_id"]], [turn(n)["chat_id"] for n in (2, 3, 4)]]
    await batcher.close()


async def test_a_lost_lease_fails_only_its_own_turn() -> None:
    db = StandIn(lost={turn(2)["chat_id"]})
    db.release_first.set()
    batcher = FinishBatcher(db._fetch, db.metrics)  # type: ignore[arg-type]
    results = await asyncio.gather(
        *(batcher.finish(turn(n)) for n in (1, 2, 3)), return_exceptions=True
    )
    assert results[0] == 101 and results[2] == 103
    assert isinstance(results[1], LeaseLost)
    await batcher.close()


async def test_a_failed_batch_sends_every_turn_back_to_finishing_alone() -> None:
    db = StandIn(fail=True)
    db.release_first.set()
    batcher = FinishBatcher(db._fetch, db.metrics)  # type: ignore[arg-type]
    with pytest.raises(BatchFailed, match="the batch statement failed"):
        await batcher.finish(turn(1))
    await batcher.close()


async def test_closing_cancels_a_batch_still_in_flight_when_the_time_given_runs_out() -> None:
    db = StandIn()  # the first batch waits until released: never, here
    batcher = FinishBatcher(db._fetch, db.metrics)  # type: ignore[arg-type]
    stuck = asyncio.create_task(batcher.finish(turn(1)))
    await db.first_started.wait()
    async with asyncio.timeout(5):  # without `within`, close() would wait for the batch forever
        await batcher.close(within=0.05)
    with pytest.raises(BatchFailed):
        await stuck
