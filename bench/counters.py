"""What a benchmark measures around its window: server counters
(pg_stat_statements, pg_stat_database, WAL, CPU) and worker processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from support import HERE, MARK, Fixture, Server, text


@dataclass
class Counters:
    """Server-wide counters read before and after a measured window."""

    statements: dict[str, tuple[int, float, int, int]]  # query -> calls, total ms, rows, wal bytes
    xact_commit: int
    wal_lsn: str
    xid: int
    chats_updates: tuple[int, int]  # n_tup_upd, n_tup_hot_upd of chatd.chats

    @classmethod
    def read(cls, conn: psycopg.Connection[Any]) -> Counters:
        conn.execute(MARK + "SELECT pg_stat_clear_snapshot()")
        statements: dict[str, tuple[int, float, int, int]] = {}
        try:
            rows = conn.execute(
                MARK + "SELECT query, calls, total_exec_time, rows, wal_bytes FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()
        except psycopg.Error:  # a given server without pg_stat_statements preloaded
            rows = []
        for query, calls, total, nrows, wal in rows:
            prev = statements.get(query, (0, 0.0, 0, 0))
            statements[query] = (prev[0] + calls, prev[1] + total, prev[2] + nrows, prev[3] + int(wal))
        commits, lsn, xid = conn.execute(
            MARK + "SELECT xact_commit, pg_current_wal_lsn()::text, "
            "txid_snapshot_xmax(txid_current_snapshot()) "
            "FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()  # type: ignore[misc]
        upd, hot = conn.execute(
            MARK + "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
            "WHERE relid = 'chatd.chats'::regclass"
        ).fetchone()  # type: ignore[misc]
        return cls(statements, int(commits), str(lsn), int(xid), (int(upd), int(hot)))


def diff(conn: psycopg.Connection[Any], before: Counters, after: Counters, turns: int,
         monitor_xacts: int) -> dict[str, Any]:
    per_statement: dict[str, dict[str, float]] = {}
    total_calls = 0
    for query, (calls, total, rows, wal) in after.statements.items():
        if "chatd-bench" in query or query == "COMMIT" or "create_chat" in query:
            continue  # the bench's own statements
        c0, t0, r0, w0 = before.statements.get(query, (0, 0.0, 0, 0))
        if calls - c0 <= 0:
            continue
        # utility statements are not normalized: one entry per channel
        short = re.sub(r'"chatd_chat_[0-9a-f-]+"', '"chatd_chat_*"', re.sub(r"\s+", " ", query))[:90]
        entry = per_statement.setdefault(
            short, {"calls": 0, "calls_per_turn": 0.0, "total_ms": 0.0, "mean_ms": 0.0, "rows": 0,
                    "wal_bytes": 0})
        entry["calls"] += calls - c0
        entry["calls_per_turn"] = round(entry["calls"] / turns, 3)
        entry["total_ms"] += total - t0
        entry["mean_ms"] = round(entry["total_ms"] / entry["calls"], 3)
        entry["rows"] += rows - r0
        entry["wal_bytes"] += wal - w0
        total_calls += calls - c0
    wal_bytes = int(conn.execute(
        MARK + "SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (after.wal_lsn, before.wal_lsn)
    ).fetchone()[0])  # type: ignore[index]
    commits = after.xact_commit - before.xact_commit - monitor_xacts
    return {
        "round_trips_per_turn": round(total_calls / turns, 3),
        "xact_commits_per_turn": round(commits / turns, 3),
        "xids_per_turn": round((after.xid - before.xid) / turns, 3),
        "wal_bytes_per_turn": round(wal_bytes / turns, 1),
        "chats_updates_per_turn": round((after.chats_updates[0] - before.chats_updates[0]) / turns, 3),
        "chats_hot_updates_per_turn": round((after.chats_updates[1] - before.chats_updates[1]) / turns, 3),
        "statements": dict(sorted(per_statement.items(), key=lambda kv: -kv[1]["calls"])),
    }


# --------------------------------------------------------------------------- worker processes


@dataclass
class WorkerSet:
    procs: list[subprocess.Popen[str]]

    @classmethod
    def start(cls, dsn: str, count: int, name: str, *extra: str) -> WorkerSet:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        procs = [
            subprocess.Popen(
                [sys.executable, str(HERE / "instant_worker.py"), "--dsn", dsn,
                 "--worker-id", f"{name}-{i}", *extra],
                stdout=subprocess.PIPE, text=True, env=env,
            )
            for i in range(count)
        ]
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                for p in procs:
                    p.kill()
                raise RuntimeError(f"worker did not start (exit {proc.poll()}): {line!r}")
        return cls(procs)

    def cpu_seconds(self) -> float:
        """user + system CPU the worker processes have used so far."""
        total = 0.0
        for proc in self.procs:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def workers(dsn: str, count: int, name: str, *extra: str) -> Iterator[WorkerSet]:
    ws = WorkerSet.start(dsn, count, name, *extra)
    try:
        yield ws
    finally:
        ws.stop()


def wait_waiting(listener: psycopg.Connection[Any], chats: set[uuid.UUID], timeout: float) -> float:
    """Consume owner-channel notifications until every chat in ``chats`` has
    reported status waiting; returns the wall-clock time of the last one."""
    left = set(chats)
    last = time.time()
    deadline = time.monotonic() + timeout
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"{len(left)} of {len(chats)} chats did not finish in {timeout}s")
        for note in listener.notifies(timeout=min(remaining, 1.0)):
            hint = json.loads(note.payload)
            if hint.get("status") == "waiting":
                chat = uuid.UUID(hint["chat_id"])
                if chat in left:
                    left.discard(chat)
                    last = time.time()
                    if not left:
                        break
    return last


def create_chats(conn: psycopg.Connection[Any], user: uuid.UUID, fixture: Fixture, n: int,
                 tag: str) -> list[uuid.UUID]:
    """n create_chat calls in the current transaction (pipelined)."""
    with conn.cursor() as cur:
        cur.executemany(
            "SELECT chatd.create_chat(%s, %s, %s, %s)",
            [(user, fixture.org, text(f"{tag} {i}"), fixture.model) for i in range(n)],
            returning=True,
        )
        ids: list[uuid.UUID] = []
        while True:
            row = cur.fetchone()
            if row is not None:
                ids.append(row[0])
            if not cur.nextset():
                break
    return ids


# --------------------------------------------------------------------------- 1 + 4: dispatch


def server_cpu_seconds(server: Server) -> float | None:
    """CPU used so far by the cluster: the postmaster, its live children, and
    (through the postmaster's cutime/cstime) every child that has exited."""
    if server.cluster is None:
        return None
    try:
        pid = int((server.cluster.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")

    def stat(path: Path) -> list[str] | None:
        try:
            return path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None

    total = 0.0
    own = stat(Path(f"/proc/{pid}/stat"))
    if own is None:
        return None
    total += sum(int(x) for x in own[11:15]) / tick  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat(entry / "stat")
            if fields is not None and int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return (0, 0)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields) - idle, sum(fields))
