"""The growth table (issue 15): what each hot statement costs as the data
behind it grows, with the ratio to the smallest size. Flat means the
largest figure is within 2x of the smallest.

Messages (10^3 .. 10^6): ONE chat of one user holds them all, the worst
case for every per-chat statement and for that user's admission. Each
size then runs ``cycles`` turns of that chat: send_message (untimed), then
timed: acquire_chats (the claim, with its first history page),
heartbeat, finish_turn, admit_spend (the user's admission) and
get_messages_before(NULL, 50) (the newest page a UI shows first: the
snapshot a client opens with). Also timed, once per cycle, the rest of
the context window the worker reads after the claim's first page
(turn_history pages; before issue 14's window this was the whole history,
4.2 ms at 10^3 and 4,910 ms at 10^6 messages).

Chats (10^3, 10^5): waiting chats of many users bulk loaded beside one
pending chat; timed: acquire_chats, recover_stale_chats and janitor (the
scans every worker or maintenance tick runs).

Bulk loads use INSERT ... SELECT generate_series with the user triggers off
(no notifications, no ledger), then rebuild_spend_ledger() and VACUUM
ANALYZE. Each table runs in a database of its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from counters import create_chats
from growth import USAGE
from growth import _load as load_messages
from support import Fixture, Server, dist_ms, new_user, setup_fixture, text

from chatd import migrate

WORKER = "bench-growth-table"


def _turn(conn: psycopg.Connection[Any], user: uuid.UUID, chat: uuid.UUID, fixture: Fixture,
          times: dict[str, list[float]]) -> None:
    """One timed turn of ``chat``: claim, heartbeat, history, finish, admission, newest page."""
    conn.execute("SELECT chatd.send_message(%s, %s, %s)", (user, chat, text("next")))

    def timed(name: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        t0 = time.perf_counter()
        rows = conn.execute(sql, params).fetchall()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return rows

    claimed = timed("claim", "SELECT chat_id, lease, messages FROM chatd.acquire_chats(%s, 1)", (WORKER,))
    assert claimed and claimed[0][0] == chat, f"the claim took {claimed}, not the growth chat"
    lease = claimed[0][1]
    timed("heartbeat", "SELECT chat_id FROM chatd.heartbeat(%s, %s, %s)", (WORKER, [chat], [lease]))
    t0 = time.perf_counter()
    after = claimed[0][2][-1]["id"]
    while True:  # the rest of the window after the claim's first page (worker/history.py)
        row = conn.execute(
            "SELECT max(h.id), count(*) FROM chatd.turn_history(%s, %s, %s, %s, 1000) AS h",
            (WORKER, chat, lease, after),
        ).fetchone()
        if row is None or not row[1]:
            break
        after = row[0]
    times.setdefault("window_read", []).append(time.perf_counter() - t0)
    timed("finish", "SELECT chatd.finish_turn(%s, %s, '\"done\"', %s)", (chat, lease, USAGE))
    timed("admission", "SELECT chatd.admit_spend(%s, %s)", (user, fixture.org))
    timed("snapshot_newest_page", "SELECT chatd.get_messages_before(%s, %s, NULL, 50)", (user, chat))


def bench_message_growth(dsn: str, sizes: Sequence[int], cycles: int) -> dict[str, Any]:
    fixture = setup_fixture(dsn)
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        user = new_user(dsn, fixture, "growth-table")
        with conn.transaction():
            [chat] = create_chats(conn, user, fixture, 1, "growth table")
        claimed = conn.execute("SELECT lease FROM chatd.acquire_chats(%s, 1)", (WORKER,)).fetchone()
        assert claimed is not None
        conn.execute("SELECT chatd.finish_turn(%s, %s, '\"done\"', %s)", (chat, claimed[0], USAGE))
        loaded = 2
        for size in sorted(sizes):
            load_messages(conn, [chat], size - loaded, fixture)
            loaded = size
            conn.execute("SELECT chatd.rebuild_spend_ledger()")
            conn.execute("VACUUM ANALYZE chatd.messages")
            conn.execute("VACUUM ANALYZE chatd.chats")
            times: dict[str, list[float]] = {}
            for _ in range(cycles):
                _turn(conn, user, chat, fixture, times)
            loaded += 3 * cycles
            out[str(size)] = {name: dist_ms(values) for name, values in times.items()}
    return out


def _load_chats(conn: psycopg.Connection[Any], fixture: Fixture, n: int) -> None:
    """n waiting chats, 1,000 per user (so no user or org row is the hot spot)."""
    conn.execute("ALTER TABLE chatd.chats DISABLE TRIGGER USER")
    try:
        conn.execute(
            """
            INSERT INTO chatd.chats (id, organization_id, owner_id, root_chat_id, status, model_config_id,
                created_at, updated_at)
            SELECT g.id, %(org)s, u.user_id, g.id, 'waiting', %(model)s, now() - g.i * interval '1 second',
                now() - g.i * interval '1 second'
            FROM (SELECT gen_random_uuid() AS id, i FROM generate_series(1, %(n)s) AS i) AS g
            CROSS JOIN LATERAL (
                SELECT om.user_id FROM chatd.organization_members AS om
                WHERE om.organization_id = %(org)s
                ORDER BY om.user_id OFFSET (g.i %% greatest(1, %(users)s)) LIMIT 1
            ) AS u
            """,
            {"org": fixture.org, "model": fixture.model, "n": n, "users": max(1, n // 1000)},
        )
    finally:
        conn.execute("ALTER TABLE chatd.chats ENABLE TRIGGER USER")


def bench_chat_growth(dsn: str, sizes: Sequence[int], calls: int) -> dict[str, Any]:
    fixture = setup_fixture(dsn)
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        users = [new_user(dsn, fixture, f"chat-growth-{i}") for i in range(max(1, max(sizes) // 1000))]
        loaded = 0
        for size in sorted(sizes):
            _load_chats(conn, fixture, size - loaded)
            loaded = size
            conn.execute("VACUUM ANALYZE chatd.chats")
            times: dict[str, list[float]] = {"claim": [], "recover_stale_chats": [], "janitor": []}
            for i in range(calls):
                with conn.transaction():
                    [chat] = create_chats(conn, users[i % len(users)], fixture, 1, "chat growth")
                t0 = time.perf_counter()
                row = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats(%s, 1)", (WORKER,)).fetchone()
                times["claim"].append(time.perf_counter() - t0)
                assert row is not None and row[0] == chat
                conn.execute("SELECT chatd.finish_turn(%s, %s, '\"done\"', %s)", (chat, row[1], USAGE))
                for name in ("recover_stale_chats", "janitor"):
                    t0 = time.perf_counter()
                    conn.execute(f"SELECT chatd.{name}()")
                    times[name].append(time.perf_counter() - t0)
            loaded += calls
            out[str(size)] = {name: dist_ms(values) for name, values in times.items()}
    return out


def bench_growth_table(server: Server, message_sizes: Sequence[int], chat_sizes: Sequence[int],
                       cycles: int) -> dict[str, Any]:
    """Both tables, each in a fresh database; p50 ratios to the smallest size."""
    dsns = []
    for name in ("bench_growth_messages", "bench_growth_chats"):
        dsns.append(server.create_database(name))
        migrate.apply(dsns[-1], log=lambda _m: None)
    messages = bench_message_growth(dsns[0], message_sizes, cycles)
    chats = bench_chat_growth(dsns[1], chat_sizes, cycles)
    result: dict[str, Any] = {"messages": messages, "chats": chats}
    for table in (messages, chats):
        smallest = table[str(min(int(k) for k in table))]
        for row in table.values():
            for name, dist in row.items():
                dist["ratio_p50"] = round(dist["p50_ms"] / max(smallest[name]["p50_ms"], 1e-6), 2)
    return result
