"""The ceiling: pgbench -N (and with pg_notify) on the same cluster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from counters import server_cpu_seconds
from support import Server, with_db

from chatd.localpg import find_pg_bin

# --------------------------------------------------------------------------- 5: pgbench


DATABASE = "chatd_bench_pgbench"


def _exe() -> str | None:
    exe = shutil.which("pgbench")
    if exe is None:
        try:
            candidate = find_pg_bin() / "pgbench"
            exe = str(candidate) if candidate.exists() else None
        except Exception:
            exe = None
    return exe


def pgbench_again(server: Server, seconds: int, clients: int) -> dict[str, Any]:
    """One more `pgbench -N` run on the database bench_pgbench set up (for
    the alternating rounds of bench/ratio.py): its tps and the cluster's CPU
    per transaction (None each when it failed or could not be measured)."""
    exe = _exe()
    if exe is None:
        return {"tps": None, "server_cpu_ms_per_txn": None}
    jobs = str(min(clients, os.cpu_count() or 1))
    return _measured(server, exe, with_db(server.admin_dsn, DATABASE), clients, jobs, seconds)


def _measured(server: Server, exe: str, dsn: str, clients: int, jobs: str, seconds: int) -> dict[str, Any]:
    """A `pgbench -N` run with the CPU a transaction costs the cluster: what
    a turn's PostgreSQL CPU compares with, whatever the machine's speed that
    hour. The first run after `pgbench -i` also pays for the load's
    checkpoint and first page images, so bench/ratio.py takes the median
    over its rounds."""
    cpu0 = server_cpu_seconds(server)
    run = _pgbench(exe, dsn, ["-N"], clients, jobs, seconds)
    # its backends have exited; their CPU reaches the postmaster's cutime
    # only once it has reaped them (read before that, it is missing)
    time.sleep(0.5)
    cpu1 = server_cpu_seconds(server)
    run["server_cpu_ms_per_txn"] = (
        round((cpu1 - cpu0) / run["transactions"] * 1000, 4)
        if cpu0 is not None and cpu1 is not None and run.get("transactions") else None
    )
    return run


def bench_pgbench(server: Server, seconds: int, clients: int) -> dict[str, Any]:
    exe = _exe()
    if exe is None:
        return {"error": "pgbench not found"}
    dsn = server.create_database(DATABASE)
    init = subprocess.run([exe, "-i", "-q", "-s", "10", dsn], capture_output=True, text=True)
    if init.returncode != 0:
        return {"error": init.stderr.strip()[-500:]}
    jobs = str(min(clients, os.cpu_count() or 1))
    simple = _measured(server, exe, dsn, clients, jobs, seconds)
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
        "server_cpu_ms_per_txn": simple.get("server_cpu_ms_per_txn"),
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
    processed = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
    return {
        "tps": float(match.group(1)) if match else None,
        "transactions": int(processed.group(1)) if processed else None,
        "latency_avg_ms": float(latency.group(1)) if latency else None,
        "output_tail": None if match else run.stdout[-500:] + run.stderr[-500:],
    }
