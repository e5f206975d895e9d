"""chatd benchmarks (`make bench`): dispatch throughput, pickup latency,
streaming, round trips / transactions / WAL per turn, heartbeat cost, and the
raw pgbench ceiling of the same cluster. See docs/benchmarks.md.

Starts its own throwaway cluster (default durability: fsync, synchronous
commit and full page writes on) unless CHATD_BENCH_DATABASE_URL or
DATABASE_URL names a server; then it creates fresh databases on that server.
Prints a table and writes bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb

from chatd import migrate
from chatd.client import Client, MessageEvent, PartsEvent, StatusEvent
from chatd.localpg import LocalCluster, find_pg_bin

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MARK = "/* chatd-bench */ "  # tags the bench's own monitoring statements

CLUSTER_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "pg_stat_statements.track": "top",
    # LISTEN/UNLISTEN "chatd_chat_<uuid>" are one entry per channel
    "pg_stat_statements.max": "50000",
    # commit time of send_message, for the pickup latency
    "track_commit_timestamp": "on",
    # durability stays at the defaults: fsync, synchronous_commit and
    # full_page_writes are on
}
REPORTED_SETTINGS = (
    "server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
    "wal_sync_method", "wal_buffers", "max_wal_size", "commit_delay", "shared_buffers",
    "max_connections", "checkpoint_timeout", "track_commit_timestamp",
)


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def dist_ms(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p95_ms": round(pct(ms, 95), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else float("nan"),
    }


def text(value: str) -> Jsonb:
    return Jsonb([{"type": "text", "text": value}])


def with_db(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "psycopg_pool": psycopg_pool.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- database


@dataclass
class Server:
    """Where the bench runs: its own cluster or a given server."""

    admin_dsn: str
    cluster: LocalCluster | None = None
    created: list[str] = field(default_factory=list)
    scratch_dirs: list[Path] = field(default_factory=list)

    @classmethod
    def start(cls) -> Server:
        given = os.environ.get("CHATD_BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
        if given:
            log(f"using the given server {migrate.redact(given)}")
            return cls(given)
        cluster = LocalCluster.create(settings=CLUSTER_SETTINGS).start()
        log(f"started a throwaway cluster on port {cluster.port} ({cluster.directory})")
        return cls(cluster.dsn("postgres"), cluster)

    def scratch(self) -> str:
        """A directory for temporary files, readable by pgbench."""
        path = Path(tempfile.mkdtemp(prefix="chatd-bench-"))
        self.scratch_dirs.append(path)
        return str(path)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return with_db(self.admin_dsn, name)

    def stop(self) -> None:
        for path in self.scratch_dirs:
            shutil.rmtree(path, ignore_errors=True)
        if self.cluster is not None:
            self.cluster.stop()
            return
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_settings(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in REPORTED_SETTINGS
        }


@dataclass
class Fixture:
    org: uuid.UUID
    model: uuid.UUID


def setup_fixture(dsn: str) -> Fixture:
    with psycopg.connect(dsn, autocommit=True) as conn:
        org = conn.execute(
            "INSERT INTO chatd.organizations (name) VALUES ('bench') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        provider = conn.execute(
            "INSERT INTO chatd.providers (name, kind, base_url) "
            "VALUES ('bench', 'openai-compat', 'http://127.0.0.1:9/v1') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        model = conn.execute(
            "INSERT INTO chatd.model_configs (provider_id, model, display_name, context_limit, "
            "max_output_tokens, input_price_per_mtok, output_price_per_mtok) "
            "VALUES (%s, 'bench-model', 'Bench', 128000, 1024, 1, 2) RETURNING id",
            (provider,),
        ).fetchone()[0]  # type: ignore[index]
    return Fixture(org, model)


def new_user(dsn: str, fixture: Fixture, name: str) -> uuid.UUID:
    with psycopg.connect(dsn, autocommit=True) as conn:
        user: uuid.UUID = conn.execute(
            "INSERT INTO chatd.users (username) VALUES (%s) RETURNING id", (name,)
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO chatd.organization_members (organization_id, user_id) VALUES (%s, %s)",
            (fixture.org, user),
        )
    return user


def user_channel(user: uuid.UUID) -> str:
    return f"chatd_user_{user}"


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


def bench_dispatch(server: Server, dsn: str, fixture: Fixture, procs: int, turns: int,
                   max_chats: int, pool_size: int) -> dict[str, Any]:
    user = new_user(dsn, fixture, f"dispatch-{procs}")
    with (
        psycopg.connect(dsn, autocommit=True) as monitor,
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn) as producer,
        workers(dsn, procs, f"dispatch{procs}", "--max-chats", str(max_chats),
                "--pool-size", str(pool_size)) as ws,
    ):
        listener.execute(f'LISTEN "{user_channel(user)}"')
        chats = create_chats(producer, user, fixture, turns, "dispatch")
        before = Counters.read(monitor)
        worker_cpu0, cpu0, server_cpu0 = ws.cpu_seconds(), _cpu_times(), server_cpu_seconds(server)
        t0 = time.time()
        producer.commit()  # every chat becomes runnable (and notified) at once
        t_last = wait_waiting(listener, set(chats), timeout=120)
        wall = t_last - t0
        worker_cpu, cpu1, server_cpu1 = ws.cpu_seconds() - worker_cpu0, _cpu_times(), server_cpu_seconds(server)
    server_cpu = None if server_cpu0 is None or server_cpu1 is None else server_cpu1 - server_cpu0
    busy = (cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1)
    # the workers exited: their backends flushed their statistics
    with psycopg.connect(dsn, autocommit=True) as monitor:
        time.sleep(0.3)  # let exiting backends report their stats
        after = Counters.read(monitor)
        first_claim, last_finish = monitor.execute(
            MARK + "SELECT min(c.started_at), max(m.created_at) FROM chatd.chats AS c "
            "JOIN chatd.messages AS m ON m.chat_id = c.id AND m.role = 'assistant' "
            "WHERE c.owner_id = %s",
            (user,),
        ).fetchone()  # type: ignore[misc]
        db_window = (last_finish - first_claim).total_seconds()
        costs = diff(monitor, before, after, turns, monitor_xacts=3)
    return {
        "worker_processes": procs,
        "turns": turns,
        "max_chats": max_chats,
        "pool_size": pool_size,
        "turns_per_s_db": round(turns / db_window, 1),
        "turns_per_s_wall": round(turns / wall, 1),
        "db_window_s": round(db_window, 3),
        # user+sys CPU of the worker processes while the turns ran, per turn
        "worker_cpu_ms_per_turn": round(worker_cpu / turns * 1000, 3),
        # every PostgreSQL process of the cluster (backends, walwriter, ...)
        "server_cpu_ms_per_turn": None if server_cpu is None else round(server_cpu / turns * 1000, 3),
        # whole machine (all processes, other users included) while it ran
        "machine_cpu_busy": round(busy, 3),
        "wall_s": round(wall, 3),
        **costs,
    }


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
    return out


# --------------------------------------------------------------------------- 5: pgbench


def bench_pgbench(server: Server, seconds: int, clients: int) -> dict[str, Any]:
    exe = shutil.which("pgbench")
    if exe is None:
        try:
            candidate = find_pg_bin() / "pgbench"
            exe = str(candidate) if candidate.exists() else None
        except Exception:
            exe = None
    if exe is None:
        return {"error": "pgbench not found"}
    dsn = server.create_database("chatd_bench_pgbench")
    init = subprocess.run([exe, "-i", "-q", "-s", "10", dsn], capture_output=True, text=True)
    if init.returncode != 0:
        return {"error": init.stderr.strip()[-500:]}
    jobs = str(min(clients, os.cpu_count() or 1))
    simple = _pgbench(exe, dsn, ["-N"], clients, jobs, seconds)
    # The same transaction plus a NOTIFY: PostgreSQL serializes the commits
    # of notifying transactions cluster-wide (the notify queue lock is held
    # through the commit's WAL flush), and every chatd state change notifies.
    script = Path(server.scratch()) / "notify.sql"
    script.write_text(NOTIFY_SCRIPT)
    notify = _pgbench(exe, dsn, ["-f", str(script)], clients, jobs, seconds)
    return {
        "command": f"pgbench -N -c {clients} -j {jobs} -T {seconds} (scale 10)",
        "tps": simple.get("tps"),
        "latency_avg_ms": simple.get("latency_avg_ms"),
        "with_notify": {"command": "the -N script plus SELECT pg_notify(...) before END", **notify},
        "output_tail": simple.get("output_tail"),
    }


NOTIFY_SCRIPT = """\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
SELECT pg_notify('bench_' || :aid % 100, :aid::text);
END;
"""


def _pgbench(exe: str, dsn: str, script: list[str], clients: int, jobs: str, seconds: int) -> dict[str, Any]:
    run = subprocess.run(
        [exe, *script, "-c", str(clients), "-j", jobs, "-T", str(seconds), dsn],
        capture_output=True, text=True,
    )
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", run.stdout)
    latency = re.search(r"latency average = ([\d.]+) ms", run.stdout)
    return {
        "tps": float(match.group(1)) if match else None,
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "output_tail": None if match else run.stdout[-500:] + run.stderr[-500:],
    }


# --------------------------------------------------------------------------- report


def table(results: dict[str, Any]) -> str:
    ceiling = results.get("pgbench", {}).get("tps") or float("nan")
    lines = []
    m, s = results["machine"], results["postgres"]
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; "
                 f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}")
    lines.append(f"PostgreSQL {s['server_version']}: fsync={s['fsync']} "
                 f"synchronous_commit={s['synchronous_commit']} full_page_writes={s['full_page_writes']} "
                 f"shared_buffers={s['shared_buffers']} wal_sync_method={s['wal_sync_method']} "
                 f"wal_buffers={s['wal_buffers']}")
    lines.append(f"Python {m['python']}, psycopg {m['psycopg']}, psycopg_pool {m['psycopg_pool']}")
    lines.append("")
    lines.append(f"{'measurement':<52} {'value':>14} {'vs pgbench':>11}")
    lines.append("-" * 79)

    def row(name: str, value: float | str, unit: str = "", ratio: bool = False) -> None:
        shown = f"{value:,.1f}" if isinstance(value, float | int) else str(value)
        r = f"{float(value) / ceiling:.1%}" if ratio and isinstance(value, float | int) else ""
        lines.append(f"{name:<52} {shown + unit:>14} {r:>11}")

    row("pgbench -N (simple update) tps", ceiling, "", True)
    notify_tps = results.get("pgbench", {}).get("with_notify", {}).get("tps")
    if notify_tps:
        row("pgbench -N + pg_notify() tps", notify_tps, "", True)
    for d in results.get("dispatch", []):
        n = d["worker_processes"]
        row(f"dispatch, {n} worker proc(s): turns/s (DB window)", d["turns_per_s_db"], "", True)
        row(f"dispatch, {n} worker proc(s): turns/s (wall clock)", d["turns_per_s_wall"], "", True)
        row("  statements / turn (pg_stat_statements)", d["round_trips_per_turn"])
        row("  commits / turn (pg_stat_database)", d["xact_commits_per_turn"])
        row("  xids / turn (write transactions)", d["xids_per_turn"])
        row("  WAL bytes / turn", d["wal_bytes_per_turn"])
        row("  chats row updates / turn (of which HOT)",
            f"{d['chats_updates_per_turn']:.2f} ({d['chats_hot_updates_per_turn']:.2f})")
        row("  CPU ms / turn: workers; PostgreSQL",
            f"{d['worker_cpu_ms_per_turn']:.2f}; {d['server_cpu_ms_per_turn'] or float('nan'):.2f}")
        row("  machine CPU busy (all users)", f"{d['machine_cpu_busy']:.0%}")
    p = results.get("pickup", {})
    for key, label in (("listen", "pickup LISTEN"), ("poll_only", "pickup --poll-only")):
        if key in p:
            v = p[key]
            row(f"{label} (n={v['n']}) p50 / p95 ms", f"{v['p50_ms']:.2f} / {v['p95_ms']:.2f}")
            row(f"{label} p99 / max ms", f"{v['p99_ms']:.2f} / {v['max_ms']:.2f}")
            c = v["client_after_commit_returned"]
            row("  vs client clock after COMMIT: p50 / p99 ms", f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}")
    st = results.get("streaming")
    if st:
        row(f"streaming {st['chats']} chats: parts/s", st["parts_per_s"], "", True)
        lat = st["part_latency_from_created_at"]
        row("  part latency p50 / p95 ms", f"{lat['p50_ms']:.1f} / {lat['p95_ms']:.1f}")
        row("  part latency p99 / max ms", f"{lat['p99_ms']:.1f} / {lat['max_ms']:.1f}")
        ld = st["part_latency_from_last_delta"]
        row("  from the LLM delta (incl. 50 ms coalescing) p50/p99", f"{ld['p50_ms']:.1f} / {ld['p99_ms']:.1f}")
        lines.append(f"  (subscriber: {st['subscriber']})")
    hb = results.get("heartbeat", {})
    for size, v in hb.items():
        row(f"heartbeat() covering {size} chats: ms / WAL bytes", f"{v['ms_per_call']:.2f} / {v['wal_bytes_per_call']:.0f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=3000, help="chats per dispatch run")
    parser.add_argument("--procs", default="1,2,4", help="worker process counts for dispatch")
    parser.add_argument("--max-chats", type=int, default=64)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--pickup", type=int, default=1000)
    parser.add_argument("--poll-pickup", type=int, default=40)
    parser.add_argument("--stream-chats", type=int, default=100)
    parser.add_argument("--pgbench-seconds", type=int, default=12)
    parser.add_argument("--pgbench-clients", type=int, default=4)
    parser.add_argument("--only", default="pgbench,dispatch,pickup,streaming,heartbeat")
    parser.add_argument("--track-all", action="store_true",
                        help="pg_stat_statements.track = all: also statements inside the chatd "
                             "functions (for profiling; the statements-per-turn figure then counts them)")
    args = parser.parse_args(argv)
    if args.track_all:
        CLUSTER_SETTINGS["pg_stat_statements.track"] = "all"
    only = set(args.only.split(","))

    started = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }
    server = Server.start()
    try:
        dsn = server.create_database("chatd_bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            except psycopg.Error as exc:
                log(f"no pg_stat_statements, statement counts will be missing: {exc}")
        migrate.apply(dsn, log=lambda _m: None)
        results["postgres"] = server_settings(dsn)
        results["cluster"] = "own throwaway cluster" if server.cluster else "given server"
        fixture = setup_fixture(dsn)
        if "pgbench" in only:
            log("pgbench -N ...")
            results["pgbench"] = bench_pgbench(server, args.pgbench_seconds, args.pgbench_clients)
        if "dispatch" in only:
            results["dispatch"] = []
            for procs in [int(x) for x in args.procs.split(",")]:
                log(f"dispatch: {args.turns} turns, {procs} worker process(es) ...")
                results["dispatch"].append(
                    bench_dispatch(server, dsn, fixture, procs, args.turns, args.max_chats, args.pool_size)
                )
        if "pickup" in only:
            log(f"pickup latency: {args.pickup} sends (LISTEN), {args.poll_pickup} (poll-only) ...")
            results["pickup"] = bench_pickup(dsn, fixture, args.pickup, args.poll_pickup)
        if "streaming" in only:
            log(f"streaming: {args.stream_chats} chats ...")
            results["streaming"] = bench_streaming(dsn, fixture, args.stream_chats, 400, 0.01, 2)
        if "heartbeat" in only:
            log("heartbeat cost vs running chats ...")
            results["heartbeat"] = bench_heartbeat(dsn, fixture, (10, 100, 1000), 50)
    finally:
        server.stop()
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = round(time.monotonic() - started, 1)
    ceiling = results.get("pgbench", {}).get("tps")
    if ceiling:
        for d in results.get("dispatch", []):
            d["ratio_to_pgbench"] = round(d["turns_per_s_db"] / ceiling, 4)
        if "streaming" in results:
            results["streaming"]["ratio_to_pgbench"] = round(results["streaming"]["parts_per_s"] / ceiling, 4)
    print(table(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {out.relative_to(HERE.parent)} in {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
