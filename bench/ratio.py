"""Dispatch against pgbench -N in alternating rounds (`--rounds`, default 3).

On a shared virtual machine one pgbench run and one dispatch run each move
by 15-25% from minute to minute, so a single ratio of the two can land
anywhere in a 20-point band. Each round runs `pgbench -N` and then dispatch
at every process count, on the same cluster; the ratio of a round is its
dispatch turns/s (DB window) over its own pgbench tps, and the report gives
the median, minimum and maximum over the rounds. Round 1 is the run that
the rest of the table reports in detail.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from dispatch import bench_dispatch
from pgbench_ceiling import pgbench_again
from support import Fixture, Server, log


def bench_ratio_rounds(
    server: Server, dsn: str, fixture: Fixture, first_pgbench: dict[str, Any],
    first_dispatch: Sequence[dict[str, Any]], rounds: int, turns: int, max_chats: int,
    pool_size: int, pgbench_seconds: int, pgbench_clients: int,
) -> dict[str, Any]:
    """Runs rounds 2..``rounds`` after the first (already measured) and
    returns every round's figures and the ratio's median, min and max per
    worker process count."""
    per_round: list[dict[str, Any]] = [{
        "pgbench_tps": first_pgbench.get("tps"),
        "pgbench_cpu_ms_per_txn": first_pgbench.get("server_cpu_ms_per_txn"),
        "turns_per_s": {str(d["worker_processes"]): d["turns_per_s_db"] for d in first_dispatch},
    }]
    procs_list = [int(d["worker_processes"]) for d in first_dispatch]
    for number in range(2, rounds + 1):
        log(f"round {number}/{rounds}: pgbench -N, then dispatch at {procs_list} worker process(es) ...")
        again = pgbench_again(server, pgbench_seconds, pgbench_clients)
        row: dict[str, Any] = {"pgbench_tps": again["tps"],
                               "pgbench_cpu_ms_per_txn": again["server_cpu_ms_per_txn"], "turns_per_s": {}}
        for procs in procs_list:
            run = bench_dispatch(server, dsn, fixture, procs, turns, max_chats, pool_size, tag=f"-r{number}")
            row["turns_per_s"][str(procs)] = run["turns_per_s_db"]
        per_round.append(row)
    ratios: dict[str, dict[str, float]] = {}
    for procs in procs_list:
        values = sorted(
            r["turns_per_s"][str(procs)] / r["pgbench_tps"] for r in per_round if r["pgbench_tps"]
        )
        if values:
            ratios[str(procs)] = {"median": round(statistics.median(values), 4),
                                  "min": round(values[0], 4), "max": round(values[-1], 4)}
    cpu = [r["pgbench_cpu_ms_per_txn"] for r in per_round if r["pgbench_cpu_ms_per_txn"]]
    return {"rounds": per_round, "ratio_to_pgbench": ratios,
            "pgbench_cpu_ms_per_txn": round(statistics.median(cpu), 4) if cpu else None}
