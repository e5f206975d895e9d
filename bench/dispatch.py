"""Dispatch throughput: create -> claim -> finish -> notifications, with
1 / 2 / 4 instant worker processes; statements, commits and WAL per turn."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from counters import (
    Counters,
    _cpu_times,
    create_chats,
    diff,
    server_cpu_seconds,
    wait_waiting,
    workers,
)
from support import MARK, Fixture, Server, new_user, user_channel


def bench_dispatch(server: Server, dsn: str, fixture: Fixture, procs: int, turns: int,
                   max_chats: int, pool_size: int, tag: str = "") -> dict[str, Any]:
    """One dispatch run; ``tag`` tells the users and workers of a repeated run
    (bench/ratio.py) apart."""
    user = new_user(dsn, fixture, f"dispatch-{procs}{tag}")
    with (
        psycopg.connect(dsn, autocommit=True) as monitor,
        psycopg.connect(dsn, autocommit=True) as listener,
        psycopg.connect(dsn) as producer,
        workers(dsn, procs, f"dispatch{procs}{tag}", "--max-chats", str(max_chats),
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
