"""Many subscribers (issue 15 item 5).

1. One client following 2,000 chats on its one shared listener: the bench
   claims every chat, then publishes ``rounds`` part batches per chat
   (publish_parts, one transaction each, from 4 threads); the client's
   subscriptions record when each batch arrives. Latency = arrival minus the
   moment publish_parts returned (its commit), so it is what the client adds.
2. 200 subscriptions on one chat (one client): 50 batches, 20 ms apart.
3. LISTEN on thousands of channels on one connection: the time of the next
   100 LISTENs as the count grows, and how fast that connection receives
   notifications (2,000 NOTIFY transactions from another connection) while it
   listens on N channels: PostgreSQL 15 checks each notification against the
   backend's list of channels one by one, so the cost per notification grows
   with N; the figures say by how much.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from counters import create_chats
from psycopg.types.json import Jsonb
from support import Fixture, dist_ms, new_user

from chatd.client import Client, PartsEvent

WORKER = "bench-subscribers"
PART = Jsonb([{"type": "text", "text": "x" * 40}])


def _claim(conn: psycopg.Connection[Any], chats: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    leases: dict[uuid.UUID, int] = {}
    wanted = set(chats)
    while len(leases) < len(wanted):
        rows = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats(%s, 1000)", (WORKER,)).fetchall()
        if not rows:
            break
        leases.update({r[0]: r[1] for r in rows if r[0] in wanted})
    return leases


def _publish(dsn: str, items: list[tuple[uuid.UUID, int, int]], sent: dict[tuple[uuid.UUID, int], float],
             gap: float) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for chat, lease, seq in items:
            conn.execute("SELECT chatd.publish_parts(%s, %s, %s, %s)", (chat, lease, seq, PART))
            sent[(chat, seq)] = time.time()
            if gap:
                time.sleep(gap)  # pacing of the load, not synchronization


async def _follow(dsn: str, user: uuid.UUID, chats: Sequence[uuid.UUID], copies: int,
                  publish: Any, expected: int) -> list[tuple[uuid.UUID, int, float]]:
    """Subscribe ``copies`` times to each chat, wait until every subscription
    is armed, run ``publish`` in a thread, collect arrivals."""
    arrivals: list[tuple[uuid.UUID, int, float]] = []
    done = asyncio.Event()
    async with await Client.connect(dsn, max_size=8, timeout=30) as client:
        subs = [client.subscribe(user, chat) for chat in chats for _ in range(copies)]
        armed = [asyncio.get_running_loop().create_future() for _ in subs]

        async def follow(i: int) -> None:
            async for event in subs[i]:
                if not armed[i].done():
                    armed[i].set_result(None)
                if isinstance(event, PartsEvent):
                    arrivals.append((event.chat_id, event.seq, time.time()))
                    if len(arrivals) >= expected:
                        done.set()

        tasks = [asyncio.create_task(follow(i)) for i in range(len(subs))]
        await asyncio.wait_for(asyncio.gather(*armed), timeout=120)
        await asyncio.to_thread(publish)
        try:
            await asyncio.wait_for(done.wait(), timeout=60)
        except TimeoutError:
            pass  # reported as parts missing
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return arrivals


def bench_many_chats(dsn: str, fixture: Fixture, chats_n: int, rounds: int) -> dict[str, Any]:
    user = new_user(dsn, fixture, "subscribers-many")
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            chats = create_chats(conn, user, fixture, chats_n, "follow")
        leases = _claim(conn, chats)
    sent: dict[tuple[uuid.UUID, int], float] = {}
    work = [(chat, leases[chat], seq) for seq in range(rounds) for chat in chats]
    threads_n = 4

    def publish() -> None:
        threads = [threading.Thread(target=_publish, args=(dsn, work[i::threads_n], sent, 0.0))
                   for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    t0 = time.time()
    arrivals = asyncio.run(_follow(dsn, user, chats, 1, publish, len(work)))
    latency = [t - sent[(c, s)] for c, s, t in arrivals if (c, s) in sent]
    return {"chats": chats_n, "batches_published": len(work), "batches_received": len(arrivals),
            "wall_s": round(time.time() - t0, 1), "latency": dist_ms(latency)}


def bench_one_chat(dsn: str, fixture: Fixture, subscribers: int, batches: int) -> dict[str, Any]:
    user = new_user(dsn, fixture, "subscribers-one")
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            [chat] = create_chats(conn, user, fixture, 1, "crowd")
        leases = _claim(conn, [chat])
    sent: dict[tuple[uuid.UUID, int], float] = {}
    work = [(chat, leases[chat], seq) for seq in range(batches)]
    arrivals = asyncio.run(_follow(
        dsn, user, [chat], subscribers, lambda: _publish(dsn, work, sent, 0.02), subscribers * batches,
    ))
    latency = [t - sent[(c, s)] for c, s, t in arrivals if (c, s) in sent]
    return {"subscribers": subscribers, "batches": batches, "deliveries": len(arrivals),
            "latency": dist_ms(latency)}


def bench_listen_cost(dsn: str, levels: Sequence[int], notifies: int) -> dict[str, Any]:
    """ms per LISTEN and notifications received per second at each channel count."""
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn, autocommit=True) as sender:
        count = 0
        for level in sorted(levels):
            while count < level - 100:
                listener.execute(f"LISTEN bench_listen_{count}")
                count += 1
            t0 = time.perf_counter()
            for _ in range(100):
                listener.execute(f"LISTEN bench_listen_{count}")
                count += 1
            listen_ms = (time.perf_counter() - t0) * 1000 / 100
            channel = f"bench_listen_{count - 1}"  # the newest: the last one the list check reaches
            t0 = time.perf_counter()
            for _ in range(notifies):
                sender.execute(f"NOTIFY {channel}")
            send_s = time.perf_counter() - t0
            received = 0
            for _n in listener.notifies(timeout=30, stop_after=notifies):
                received += 1
            total_s = time.perf_counter() - t0
            out[str(level)] = {
                "listen_ms": round(listen_ms, 3),
                "notify_commit_ms": round(send_s * 1000 / notifies, 3),
                "received": received,
                "received_per_s": round(received / total_s, 1),
            }
    return out


def bench_subscribers(dsn: str, fixture: Fixture, chats_n: int, rounds: int) -> dict[str, Any]:
    return {
        "many_chats": bench_many_chats(dsn, fixture, chats_n, rounds),
        "one_chat": bench_one_chat(dsn, fixture, 200, 50),
        "listen_cost": bench_listen_cost(dsn, (100, 1000, 2000, 5000), 2000),
    }
