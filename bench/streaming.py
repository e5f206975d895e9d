"""Streaming: 100 chats each with a subscriber (chatd.client), parts/s and
part latency."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from counters import Counters, WorkerSet, create_chats, diff
from support import MARK, Fixture, dist_ms, new_user

from chatd.client import Client, MessageEvent, PartsEvent, StatusEvent

# --------------------------------------------------------------------------- 3: streaming


async def _subscribe_all(dsn: str, user: uuid.UUID, chats: Sequence[uuid.UUID],
                         start_workers: Any) -> tuple[list[tuple[uuid.UUID, int, int, float]], str]:
    receipts: list[tuple[uuid.UUID, int, int, float]] = []
    async with await Client.connect(dsn, max_size=4) as client:
        subs = [client.subscribe(user, chat) for chat in chats]
        first_status: list[asyncio.Future[None]] = [
            asyncio.get_running_loop().create_future() for _ in chats
        ]

        async def follow(index: int) -> None:
            try:
                await _follow(index)
            except BaseException as exc:
                if not first_status[index].done():
                    first_status[index].set_exception(exc)
                raise

        async def _follow(index: int) -> None:
            seen_running = False
            async for event in subs[index]:
                now = time.time()
                if isinstance(event, StatusEvent):
                    if not first_status[index].done():
                        first_status[index].set_result(None)
                    seen_running = seen_running or event.status == "running"
                elif isinstance(event, PartsEvent):
                    receipts.append((event.chat_id, event.lease, event.seq, now))
                elif isinstance(event, MessageEvent) and event.message.role == "assistant":
                    return

        tasks = [asyncio.create_task(follow(i)) for i in range(len(chats))]
        await asyncio.wait_for(asyncio.gather(*first_status), timeout=60)
        stop = await asyncio.to_thread(start_workers)
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        finally:
            await asyncio.to_thread(stop)
            for sub in subs:
                await sub.aclose()
    return receipts, "chatd.client.Client.subscribe (one shared LISTEN connection, 100 channels)"


def bench_streaming(dsn: str, fixture: Fixture, chats_n: int, deltas: int, interval: float,
                    procs: int) -> dict[str, Any]:
    user = new_user(dsn, fixture, "streaming")
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            chats = create_chats(conn, user, fixture, chats_n, "stream")
        before = Counters.read(conn)

    def start_workers() -> Any:
        ws = WorkerSet.start(
            dsn, procs, "stream", "--max-chats", str(chats_n // procs + 1), "--pool-size", "10",
            "--deltas", str(deltas), "--delta-interval", str(interval), "--heartbeat-interval", "1",
        )
        return ws.stop

    receipts, subscriber = asyncio.run(_subscribe_all(dsn, user, chats, start_workers))
    with psycopg.connect(dsn, autocommit=True) as conn:
        time.sleep(0.3)
        after = Counters.read(conn)
        rows = conn.execute(
            MARK + "SELECT p.chat_id, p.lease, p.seq, extract(epoch FROM p.created_at)::float8, "
            "p.parts FROM chatd.stream_parts AS p JOIN chatd.chats AS c ON c.id = p.chat_id "
            "WHERE c.owner_id = %s",
            (user,),
        ).fetchall()
        costs = diff(conn, before, after, chats_n, monitor_xacts=3)
    created = {(r[0], r[1], r[2]): r[3] for r in rows}
    last_delta: dict[tuple[uuid.UUID, int, int], float] = {}
    for chat, lease, seq, _created, parts in rows:
        stamps = [float(s) for p in parts for s in str(p.get("text", "")).split(";") if s]
        if stamps:
            last_delta[(chat, lease, seq)] = max(stamps)
    latency = [t - created[(c, le, sq)] for c, le, sq, t in receipts if (c, le, sq) in created]
    from_delta = [t - last_delta[(c, le, sq)] for c, le, sq, t in receipts if (c, le, sq) in last_delta]
    times = sorted(created.values())
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    heartbeat = {q: s for q, s in costs["statements"].items() if "heartbeat" in q}
    return {
        "chats": chats_n,
        "worker_processes": procs,
        "deltas_per_turn": deltas,
        "delta_interval_s": interval,
        "flush_interval_s": 0.05,
        "subscriber": subscriber,
        "parts_stored": len(rows),
        "parts_received": len(receipts),
        "parts_per_s": round(len(rows) / span, 1),
        "part_latency_from_created_at": dist_ms(latency),
        "part_latency_from_last_delta": dist_ms(from_delta),
        "heartbeat": heartbeat,
        "round_trips_per_turn": costs["round_trips_per_turn"],
        "statements": costs["statements"],
    }
