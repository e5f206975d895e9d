"""The cost of one heartbeat() covering 10 / 100 / 1000 running chats:
time and WAL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from counters import create_chats
from support import MARK, Fixture, new_user

# --------------------------------------------------------------------------- heartbeat scaling


def bench_heartbeat(dsn: str, fixture: Fixture, sizes: Sequence[int], calls: int) -> dict[str, Any]:
    """Cost of one chatd.heartbeat() statement as a function of the running chats it covers."""
    user = new_user(dsn, fixture, "heartbeat")
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            create_chats(conn, user, fixture, max(sizes), "heartbeat")
        for size in sizes:
            worker = f"bench-hb-{size}"
            claimed = conn.execute(
                "SELECT chat_id, lease FROM chatd.acquire_chats(%s, %s)", (worker, size)
            ).fetchall()
            ids = [r[0] for r in claimed]
            leases = [r[1] for r in claimed]
            lsn0 = conn.execute(MARK + "SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
            t0 = time.perf_counter()
            for _ in range(calls):
                conn.execute("SELECT chat_id FROM chatd.heartbeat(%s, %s, %s)", (worker, ids, leases))
            elapsed = time.perf_counter() - t0
            wal = conn.execute(
                MARK + "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (lsn0,)
            ).fetchone()[0]  # type: ignore[index]
            conn.execute("SELECT chatd.release_chats(%s)", (worker,))
            out[str(len(ids))] = {
                "ms_per_call": round(elapsed / calls * 1000, 3),
                "wal_bytes_per_call": round(float(wal) / calls, 1),
            }
        # released, they are pending again: archived, no later benchmark's
        # claim (sse claims exactly its own chats) picks them up
        conn.execute(MARK + "SELECT count(chatd.archive_chat(%s, c.id)) FROM chatd.chats AS c "
                     "WHERE c.owner_id = %s", (user, user))
    return out
