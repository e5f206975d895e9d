"""Growth: the cost of one user's spend admission (chatd.admit_spend) as the
user's history grows to 10^3, 10^4, 10^5 and 10^6 priced messages in the
current period, with the ratio to the smallest size (flat: the 10^6 figure
within 2x of the 10^3 one). Beside it, the same user's spend read by a scan
of their messages (spend_in_period over bounds that are not UTC midnights,
the pre-ledger path), and the time of chatd.rebuild_spend_ledger() after
each bulk load.

The messages are bulk loaded with INSERT ... SELECT generate_series with the
user triggers of chatd.messages disabled (a bulk load that bypasses
triggers, as the docs describe), then chatd.rebuild_spend_ledger() brings
the ledger up to date. They are spread over the minutes since the period
started, in 10 chats.

Also: contention of concurrent finishes of one user (one ledger row per user
and day): N threads, each finishing its own claimed chats, for one user and
for N different users; milliseconds per finish."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from counters import create_chats
from support import Fixture, dist_ms, new_user

USAGE = '{"input_tokens": 100, "output_tokens": 100}'


def _load(conn: psycopg.Connection[Any], chats: list[uuid.UUID], n: int, fixture: Fixture) -> None:
    conn.execute("ALTER TABLE chatd.messages DISABLE TRIGGER USER")
    try:
        conn.execute(
            """
            INSERT INTO chatd.messages (chat_id, role, content, model_config_id, input_tokens,
                output_tokens, total_cost_micros, created_at)
            SELECT (%s::uuid[])[1 + i %% cardinality(%s::uuid[])], 'assistant',
                '[{"type": "text", "text": "bulk"}]', %s, 100, 100, 300,
                greatest(p.period_start, now() - (i %% 4000) * interval '1 minute')
            FROM generate_series(1, %s) AS i CROSS JOIN chatd.spend_current_period AS p
            """,
            (chats, chats, fixture.model, n),
        )
    finally:
        conn.execute("ALTER TABLE chatd.messages ENABLE TRIGGER USER")


def bench_growth(dsn: str, fixture: Fixture, sizes: Sequence[int], calls: int) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": {}}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE chatd.usage_limit_config SET enabled = TRUE, default_limit_micros = 9000000000000000, "
            "period = 'month' WHERE singleton"
        )
        user = new_user(dsn, fixture, "growth")
        with conn.transaction():
            chats = create_chats(conn, user, fixture, 10, "growth")
        loaded = conn.execute(
            "SELECT count(*) FROM chatd.messages AS m JOIN chatd.chats AS c ON c.id = m.chat_id WHERE c.owner_id = %s",
            (user,),
        ).fetchone()[0]  # type: ignore[index]
        for size in sorted(sizes):
            _load(conn, chats, size - loaded, fixture)
            loaded = size
            conn.execute("VACUUM ANALYZE chatd.messages")
            t0 = time.perf_counter()
            conn.execute("SELECT chatd.rebuild_spend_ledger()")
            rebuild_s = time.perf_counter() - t0
            conn.execute("VACUUM ANALYZE chatd.spend_ledger")
            admit = []
            for _ in range(calls):
                t0 = time.perf_counter()
                conn.execute("SELECT chatd.admit_spend(%s, %s)", (user, fixture.org))
                admit.append(time.perf_counter() - t0)
            scan = []
            for _ in range(max(3, calls // 20)):
                t0 = time.perf_counter()
                conn.execute(
                    "SELECT chatd.spend_in_period(%s, p.period_start - interval '1 microsecond', p.resets_at) "
                    "FROM chatd.spend_current_period AS p",
                    (user,),
                )
                scan.append(time.perf_counter() - t0)
            out["sizes"][str(size)] = {
                "admit_spend": dist_ms(admit),
                "scan_spend": dist_ms(scan),
                "rebuild_s": round(rebuild_s, 3),
            }
        smallest = out["sizes"][str(min(sizes))]["admit_spend"]["p50_ms"]
        for v in out["sizes"].values():
            v["ratio_to_smallest"] = round(v["admit_spend"]["p50_ms"] / smallest, 2)
    return out


def _finisher(dsn: str, items: list[tuple[uuid.UUID, int]], times: list[float], lock: threading.Lock) -> None:
    """Finishes the given turns one transaction each; appends the times."""
    mine = []
    with psycopg.connect(dsn, autocommit=True) as c:
        for chat, lease in items:
            t0 = time.perf_counter()
            c.execute("SELECT chatd.finish_turn(%s, %s, '\"done\"', %s)", (chat, lease, USAGE))
            mine.append(time.perf_counter() - t0)
    with lock:
        times.extend(mine)


def bench_finish_contention(dsn: str, fixture: Fixture, threads: int, per_thread: int) -> dict[str, Any]:
    """ms per finish_turn with ``threads`` concurrent finishers: one user, and one user per thread."""
    out: dict[str, Any] = {}
    for mode in ("one_user", "one_user_per_thread"):
        users = [new_user(dsn, fixture, f"contention-{mode}-{i}") for i in range(threads)]
        if mode == "one_user":
            users = [users[0]] * threads
        work: list[list[tuple[uuid.UUID, int]]] = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            for i, user in enumerate(users):
                with conn.transaction():
                    chats = create_chats(conn, user, fixture, per_thread, f"contention {mode}")
                worker = f"bench-contention-{mode}-{i}"
                leases: dict[uuid.UUID, int] = {}
                while len(leases) < len(chats):
                    rows = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats(%s, 1000)", (worker,)).fetchall()
                    if not rows:
                        break
                    leases.update({r[0]: r[1] for r in rows if r[0] in chats})
                work.append(list(leases.items()))
        times: list[float] = []
        lock = threading.Lock()
        started = time.perf_counter()
        pool = [threading.Thread(target=_finisher, args=(dsn, items, times, lock)) for items in work]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        wall = time.perf_counter() - started
        out[mode] = {"finishes": len(times), "finishes_per_s": round(len(times) / wall, 1), **dist_ms(times)}
    out["threads"] = threads
    return out
