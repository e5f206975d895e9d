"""Claim time against chat length (issue 14, docs/context.md): what a worker
reads before a model step of a chat of 10 .. 10^5 messages. Timed per turn:
acquire_chats (the claim: the window chosen in SQL and its first page) and
the rest of the window the worker reads with turn_history. Before the
context window (issue 14) the worker read the whole history here.

One chat per size on the fixture's model (128k-token window), in a
database of its own, loaded with one INSERT ... SELECT through the
triggers (so messages.tokens is kept as in production): alternating user
and assistant messages of about 420 bytes (about 110 tokens each; the
assistant ones priced and reporting 100 output tokens). Bounded means: the
10^5 figure within 2x of the 10^4 one; below that the whole history is
smaller than the window, so the read grows with it until the window is
full (about 1,000 such messages)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from counters import create_chats
from growth import USAGE
from support import Fixture, Server, dist_ms, new_user, setup_fixture, text

from chatd import migrate

WORKER = "bench-claim-window"


def _load(conn: psycopg.Connection[Any], chat: Any, fixture: Fixture, n: int) -> None:
    conn.execute(
        """
        INSERT INTO chatd.messages (chat_id, role, content, model_config_id, output_tokens, total_cost_micros)
        SELECT %(chat)s, CASE WHEN i %% 2 = 0 THEN 'user' ELSE 'assistant' END::chatd.message_role,
            jsonb_build_array(jsonb_build_object('type', 'text', 'text', 'message ' || i || ' ' || repeat('lorem ipsum ', 33))),
            %(model)s, CASE WHEN i %% 2 = 1 THEN 100 END, CASE WHEN i %% 2 = 1 THEN 300 END
        FROM generate_series(1, %(n)s) AS i
        """,
        {"chat": chat, "model": fixture.model, "n": n},
    )


def bench_claim_window(server: Server, sizes: Sequence[int], cycles: int) -> dict[str, Any]:
    """{size: {claim, window_read, claim_and_read: dist, window_messages}} and p50 ratios to the smallest."""
    dsn = server.create_database("bench_claim_window")
    migrate.apply(dsn, log=lambda _m: None)
    fixture = setup_fixture(dsn)
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        user = new_user(dsn, fixture, "claim-window")
        for size in sorted(sizes):
            with conn.transaction():
                [chat] = create_chats(conn, user, fixture, 1, f"claim window {size}")
            claimed = conn.execute("SELECT lease FROM chatd.acquire_chats(%s, 1)", (WORKER,)).fetchone()
            assert claimed is not None
            conn.execute("SELECT chatd.finish_turn(%s, %s, '\"done\"', %s)", (chat, claimed[0], USAGE))
            _load(conn, chat, fixture, max(size - 2, 0))
            conn.execute("VACUUM ANALYZE chatd.messages")
            times: dict[str, list[float]] = {"claim": [], "window_read": [], "claim_and_read": []}
            window = 0
            for _ in range(cycles):
                conn.execute("SELECT chatd.send_message(%s, %s, %s)", (user, chat, text("next")))
                t0 = time.perf_counter()
                row = conn.execute(
                    "SELECT chat_id, lease, messages FROM chatd.acquire_chats(%s, 1)", (WORKER,)
                ).fetchone()
                t1 = time.perf_counter()
                assert row is not None and row[0] == chat
                lease, page = row[1], row[2]
                after, read = page[-1]["id"], len(page)
                while True:  # the rest of the window (worker/history.py)
                    more = conn.execute(
                        "SELECT max(h.id), count(*) FROM chatd.turn_history(%s, %s, %s, %s, 1000) AS h",
                        (WORKER, chat, lease, after),
                    ).fetchone()
                    if more is None or not more[1]:
                        break
                    after, read = more[0], read + more[1]
                t2 = time.perf_counter()
                times["claim"].append(t1 - t0)
                times["window_read"].append(t2 - t1)
                times["claim_and_read"].append(t2 - t0)
                window = read
                conn.execute("SELECT chatd.finish_turn(%s, %s, '\"done\"', %s)", (chat, lease, USAGE))
            out[str(size)] = {**{k: dist_ms(v) for k, v in times.items()}, "window_messages": window}
    smallest = out[str(min(sizes))]
    for row_ in out.values():
        for name in ("claim", "window_read", "claim_and_read"):
            row_[name]["ratio_p50"] = round(row_[name]["p50_ms"] / max(smallest[name]["p50_ms"], 1e-6), 2)
    return out
