"""Worker counters, served in the Prometheus text format when asked.

A dozen counters do not justify a dependency: this is the exposition format's
simple subset (counters only), served by asyncio on an optional port.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

HELP = {
    "chatd_worker_db_calls_total": "database statements sent",
    "chatd_worker_db_timeouts_total": "database calls abandoned at their deadline",
    "chatd_worker_turns_claimed_total": "turns claimed",
    "chatd_worker_turns_finished_total": "turns finished successfully",
    "chatd_worker_turns_interrupted_total": "partial messages saved after an interrupt",
    "chatd_worker_turn_failures_total": "turns that failed (retried or errored, as SQL decided)",
    "chatd_worker_leases_lost_total": "writes refused because the lease was lost",
    "chatd_worker_part_flushes_total": "publish_parts calls that succeeded",
    "chatd_worker_finish_batches_total": "finish_turns statements (each finishing one or more turns)",
    "chatd_worker_heartbeats_total": "batched heartbeats sent",
    "chatd_worker_wakeups_total": "chatd_wake notifications received",
    "chatd_worker_listener_reconnects_total": "LISTEN connection re-establishments",
    "chatd_worker_recovered_total": "stale chats this worker recovered",
}


class Metrics:
    def __init__(self) -> None:
        self.counters: defaultdict[str, int] = defaultdict(int)

    def inc(self, name: str, amount: int = 1) -> None:
        self.counters[name] += amount

    def render(self) -> str:
        lines = []
        for name in sorted(set(HELP) | set(self.counters)):
            lines.append(f"# HELP {name} {HELP.get(name, name)}")
            lines.append(f"# TYPE {name} counter")
            lines.append(f"{name} {self.counters.get(name, 0)}")
        return "\n".join(lines) + "\n"


async def serve_metrics(metrics: Metrics, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readline()
            while (await reader.readline()).strip():
                pass  # skip headers
            if request.split(b" ")[1:2] == [b"/metrics"]:
                body, status = metrics.render().encode(), b"200 OK"
            else:
                body, status = b"not found\n", b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
