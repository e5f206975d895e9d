"""Tool steps: what one step of the agent loop costs the database.

The statements the worker issues for a tool step, in its order, on claimed
chats: `commit_tool_step` (the assistant message with one MCP tool call, its
usage and cost) then `commit_tool_results` (the tool message with the
result), each its own round trip and commit, as chatd/worker/tools.py does.
The tool itself and the LLM are left out: this is the database's share.
Reported per step: round trips and commits (two statements, each its own
autocommit transaction as in the worker: counted by construction, since
pg_stat_database.xact_commit is flushed lazily and miscounts short runs),
WAL bytes (pg_current_wal_lsn) and latency of the two calls together, and
for comparison the finish_turn that ends a turn without tools."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from support import MARK, Fixture, dist_ms, new_user, text

STEP = MARK + (
    "SELECT chatd.commit_tool_step(%s, %s, %s, "
    "'{\"input_tokens\": 1000, \"output_tokens\": 50}', NULL, 10)"
)
RESULTS = MARK + "SELECT chatd.commit_tool_results(%s, %s, %s)"
FINISH = MARK + (
    "SELECT chatd.finish_turn(%s, %s, %s, '{\"input_tokens\": 1000, \"output_tokens\": 50}', "
    "NULL, 10, p_finish_reason => 'stop')"
)
WAL_POSITION = MARK + "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"


def _wal(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(WAL_POSITION).fetchone()
    assert row is not None
    return int(row[0])


def _claim(conn: psycopg.Connection[Any], chats: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    leases: dict[uuid.UUID, int] = {}
    while len(leases) < len(chats):
        rows = conn.execute(
            MARK + "SELECT chat_id, lease FROM chatd.acquire_chats('bench-tools', 100)"
        ).fetchall()
        if not rows:
            raise RuntimeError(f"claimed {len(leases)} of {len(chats)} chats")
        leases.update({r[0]: r[1] for r in rows})
    return leases


def bench_tool_step(dsn: str, fixture: Fixture, chats_n: int, steps: int) -> dict[str, Any]:
    user = new_user(dsn, fixture, "tools")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(MARK + "SELECT chatd.admin_upsert_mcp_server('bench', 'http://127.0.0.1:9/mcp', "
                     "NULL, NULL, TRUE)")
        chats = [
            conn.execute(
                MARK + "SELECT chatd.create_chat(%s, %s, %s, %s, p_mcp_servers => ARRAY['bench'])",
                (user, fixture.org, text(f"tools {i}"), fixture.model),
            ).fetchone()[0]  # type: ignore[index]
            for i in range(chats_n)
        ]
        leases = _claim(conn, chats)
        latencies: list[float] = []
        wal0 = _wal(conn)
        for step in range(steps):
            for chat in chats:
                call = f"call_{step}"
                part = {"type": "tool-call", "tool_call_id": call, "tool_name": "mcp__bench__add",
                        "input": {"a": step, "b": 1}, "source": "mcp"}
                started = time.perf_counter()
                conn.execute(STEP, (chat, leases[chat], Jsonb([part])))
                conn.execute(RESULTS, (chat, leases[chat], Jsonb([
                    {"tool_call_id": call, "output": str(step + 1), "is_error": False}])))
                latencies.append(time.perf_counter() - started)
        wal1 = _wal(conn)
        finish: list[float] = []
        for chat in chats:
            started = time.perf_counter()
            conn.execute(FINISH, (chat, leases[chat], Jsonb([{"type": "text", "text": "done"}])))
            finish.append(time.perf_counter() - started)
        wal2 = _wal(conn)
        statuses = conn.execute(
            MARK + "SELECT status::text, count(*) FROM chatd.chats WHERE owner_id = %s GROUP BY 1", (user,)
        ).fetchall()
    step_count = chats_n * steps
    return {
        "chats": chats_n,
        "steps_per_turn": steps,
        "round_trips_per_step": 2,
        "commits_per_step": 2,
        "wal_bytes_per_step": round((wal1 - wal0) / step_count),
        "step_latency": dist_ms(latencies),
        "finish_turn": {
            "round_trips": 1,
            "commits": 1,
            "wal_bytes": round((wal2 - wal1) / chats_n),
            "latency": dist_ms(finish),
        },
        "final_statuses": {s: n for s, n in statuses},
    }
