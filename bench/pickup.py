"""Pickup latency: commit of send_message -> the chat is running, with
LISTEN and with --poll-only."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from counters import create_chats, wait_waiting, workers
from support import MARK, Fixture, dist_ms, new_user, text, user_channel

# --------------------------------------------------------------------------- 2: pickup latency


def bench_pickup(dsn: str, fixture: Fixture, samples: int, poll_samples: int) -> dict[str, Any]:
    user = new_user(dsn, fixture, "pickup")
    result: dict[str, Any] = {}
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(dsn, autocommit=True) as listener,
    ):
        listener.execute(f'LISTEN "{user_channel(user)}"')
        with workers(dsn, 1, "pickup", "--max-chats", "10", "--pool-size", "2"):
            with conn.transaction():
                chats = create_chats(conn, user, fixture, samples + poll_samples, "pickup")
            wait_waiting(listener, set(chats), timeout=120)
            result["listen"] = _pickup_series(conn, listener, user, chats[:samples], jitter=0.0)
        with workers(dsn, 1, "pickup-poll", "--max-chats", "10", "--pool-size", "2", "--poll-only"):
            result["poll_only"] = _pickup_series(conn, listener, user, chats[samples:], jitter=1.0)
    result["listen"]["method"] = (
        f"{samples} sequential send_message transactions, one per idle waiting chat, each after "
        "the previous turn finished; latency = chats.started_at (now() of the acquire_chats "
        "transaction) minus the send's commit timestamp (track_commit_timestamp), both DB clock; "
        "also against the client's time.time() before the call and right after COMMIT returned "
        "(same host clock)"
    )
    result["poll_only"]["method"] = (
        f"{poll_samples} sends, each after a random 0-1 s pause so sends fall at random points of "
        "the 1 s poll cycle; worker --poll-only, poll_interval 1 s"
    )
    return result


def _pickup_series(conn: psycopg.Connection[Any], listener: psycopg.Connection[Any],
                   user: uuid.UUID, chats: Sequence[uuid.UUID], jitter: float) -> dict[str, Any]:
    """Sequential sends; three clocks per send: the client before the call and
    right after COMMIT returned (time.time()), and the commit timestamp of the
    send's transaction (track_commit_timestamp, DB clock)."""
    sent: dict[uuid.UUID, tuple[float, float, str]] = {}
    rng = random.Random(7)
    with psycopg.connect(conn.info.dsn) as tx:
        for chat in chats:
            if jitter:
                time.sleep(rng.uniform(0, jitter))
            before = time.time()
            xid = tx.execute(
                "SELECT chatd.send_message(%s, %s, %s), pg_current_xact_id()::text",
                (user, chat, text("again")),
            ).fetchone()[1]  # type: ignore[index]
            tx.commit()
            sent[chat] = (before, time.time(), str(xid))
            wait_waiting(listener, {chat}, timeout=30)
    rows = conn.execute(
        MARK + "SELECT c.id, extract(epoch FROM c.started_at)::float8, "
        "extract(epoch FROM pg_xact_commit_timestamp(x.xid::xid))::float8 "
        "FROM chatd.chats AS c JOIN unnest(%s::uuid[], %s::text[]) AS x (id, xid) ON x.id = c.id",
        (list(sent), [v[2] for v in sent.values()]),
    ).fetchall()
    from_commit = [started - committed for _chat, started, committed in rows if committed is not None]
    after_return = [started - sent[chat][1] for chat, started, _c in rows]
    before_call = [started - sent[chat][0] for chat, started, _c in rows]
    out = dist_ms(from_commit)
    out["clock"] = "DB: pg_xact_commit_timestamp(send) -> chats.started_at"
    out["client_after_commit_returned"] = dist_ms(after_return)
    out["client_after_commit_returned"]["negative_samples"] = sum(1 for v in after_return if v < 0)
    out["client_before_call"] = dist_ms(before_call)
    return out
