"""SSE: N concurrent `GET /api/chats/{id}/stream` on one `chatd serve`
process (a subprocess, so its CPU and memory are its own), each chat
running; rounds of one part batch per chat are published through
chatd.publish_parts in one transaction, and the latency from that COMMIT to
the `parts` event arriving at the HTTP client is measured (p50/p99). The
serve process's CPU seconds (utime + stime) and peak RSS (VmHWM) come from
/proc. The clients run in this process (httpx, one event loop).

Each client closes its stream after the last part, while other streams
still wait for theirs: that found a lost-notification bug in
chatd.listener (a channel change mid-burst dropped the rest of the burst).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import psycopg
from psycopg.types.json import Jsonb
from support import RESULTS, Fixture, dist_ms, log, new_user

from chatd.http import issue_token

SECRET = "bench-secret-" + "x" * 32


def _proc(pid: int) -> tuple[float, int]:
    """CPU seconds and peak RSS (kB) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return cpu, hwm


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(url: str, token: str, chats: list[uuid.UUID], dsn: str, rounds: int,
               pid: int) -> dict[str, Any]:
    # Long: the clients, the rounds and the measurement share their state
    # (receipts, per-round counters); split, they would pass it all around.
    received: dict[tuple[str, int], float] = {}
    counts = [0] * rounds
    round_done = [asyncio.Event() for _ in range(rounds)]
    ready = 0
    all_ready = asyncio.Event()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=httpx.Timeout(120, connect=60), limits=limits) as http:

        async def follow(chat: uuid.UUID) -> None:
            nonlocal ready
            async with http.stream("GET", f"/api/chats/{chat}/stream") as response:
                response.raise_for_status()
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                        if event == "status" and not all_ready.is_set():
                            ready += 1
                            if ready == len(chats):
                                all_ready.set()
                    elif line.startswith("data: ") and event == "parts":
                        data = json.loads(line[6:])
                        received[(data["chat_id"], data["seq"])] = time.time()
                        counts[data["seq"]] += 1
                        if counts[data["seq"]] == len(chats):
                            round_done[data["seq"]].set()
                        if data["seq"] == rounds - 1:
                            return  # streams close while others still wait for the part

        started = time.monotonic()
        tasks = [asyncio.create_task(follow(c)) for c in chats]
        await asyncio.wait_for(all_ready.wait(), 300)
        connect_s = time.monotonic() - started
        cpu0, _ = _proc(pid)
        committed: dict[int, float] = {}
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats('bench-sse', %s)",
                                     (len(chats),))
            leases = dict(await cur.fetchall())
            if set(chats) - set(leases):  # another benchmark left runnable chats behind
                raise RuntimeError(f"sse: claimed {len(set(chats) & set(leases))} of its {len(chats)} chats: "
                                   "some other pending chat was claimed first")
            for seq in range(rounds):
                async with conn.transaction():
                    async with conn.cursor() as c:
                        await c.executemany(
                            "SELECT chatd.publish_parts(%s, %s, %s, %s)",
                            [(chat, leases[chat], seq, Jsonb([{"type": "text", "text": f"{seq} "}]))
                             for chat in chats],
                        )
                committed[seq] = time.time()
                try:
                    await asyncio.wait_for(round_done[seq].wait(), 60)
                except TimeoutError:
                    log(f"sse: round {seq}: {counts[seq]} of {len(chats)} streams got the part; "
                        f"per round {counts}, distinct {[sum(1 for k in received if k[1] == r) for r in range(rounds)]}")
        cpu1, hwm = _proc(pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    latency = [t - committed[seq] for (_, seq), t in received.items()]
    return {
        "streams": len(chats), "rounds": rounds, "connect_all_s": round(connect_s, 2),
        "parts_received": len(received), "parts_expected": len(chats) * rounds,
        "latency_commit_to_client": dist_ms(latency),
        "serve_cpu_s_during_rounds": round(cpu1 - cpu0, 2), "serve_peak_rss_mb": round(hwm / 1024, 1),
    }


def bench_sse(dsn: str, fixture: Fixture, streams: int, rounds: int) -> dict[str, Any]:
    user = new_user(dsn, fixture, "sse")
    with psycopg.connect(dsn, autocommit=True) as conn:
        chats = [conn.execute("SELECT chatd.create_chat(%s, %s, %s, %s)",
                              (user, fixture.org, Jsonb("sse"), fixture.model)).fetchone()[0]  # type: ignore[index]
                 for _ in range(streams)]
    port = _free_port()
    env = {**os.environ, "CHATD_DATABASE_URL": dsn, "CHATD_JWT_SECRET": SECRET, "CHATD_POOL_SIZE": "20",
           "CHATD_DB_TIMEOUT": "60", "CHATD_PORT": str(port)}
    log_path = RESULTS / "sse-serve.log"
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log_file:  # never a pipe nobody reads: it would block the server
        server = subprocess.Popen([sys.executable, "-m", "chatd", "serve", "--log-level", "warning"],
                                  env=env, stderr=log_file, stdout=log_file)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url + "/api/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        log(f"sse: {streams} streams on one chatd serve (pid {server.pid}) ...")
        token = issue_token(user, fixture.org, secret=SECRET, ttl_seconds=3600)
        result = asyncio.run(_run(url, token, chats, dsn, rounds, server.pid))
    finally:
        server.terminate()
        server.wait(30)
    return result
