"""Worker metrics with prometheus-client, served on an optional port with the
health probes: ``/metrics`` (Prometheus text format), ``/healthz`` and
``/readyz`` (docs/cli.md, docs/deploy/).

Each `Metrics` has its own registry (several workers may run in one
process, as in the tests), with the library's process and platform
collectors. Names and types are listed in `docs/deploy/metrics.md` and
checked by tests/python/test_metrics.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["HELP", "Metrics", "serve_metrics"]

# Plain counters, incremented by name with `Metrics.inc` (the ``_total``
# suffix is the exposition's).
HELP = {
    "chatd_worker_db_calls_total": "database statements sent",
    "chatd_worker_db_timeouts_total": "database calls abandoned at their deadline",
    "chatd_worker_turns_claimed_total": "turns claimed",
    "chatd_worker_leases_lost_total": "writes refused because the lease was lost",
    "chatd_worker_part_flushes_total": "publish_parts calls that succeeded",
    "chatd_worker_finish_batches_total": "finish_turns statements (each finishing one or more turns)",
    "chatd_worker_heartbeats_total": "batched heartbeats sent",
    "chatd_worker_wakeups_total": "chatd_wake notifications received",
    "chatd_worker_listener_reconnects_total": "LISTEN connection re-establishments",
    "chatd_worker_recovered_total": "stale chats this worker recovered",
    "chatd_worker_janitor_runs_total": "janitor() calls that succeeded",
    "chatd_worker_write_retries_total": "result writes retried after a transient failure",
    "chatd_worker_compactions_total": "summaries of older history committed (docs/context.md)",
}

# seconds: from 10 ms (a local model's first token) to 10 minutes (a long turn)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_DB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128)
_CALL = re.compile(r"chatd\.(\w+)")  # the chatd function a statement calls


class _Values:
    """``metrics.counters[name]``: the current value of a counter, 0 when unset."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> float:
        return self._registry.get_sample_value(name) or 0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.counters = _Values(self.registry)
        self._plain: dict[str, Counter] = {}
        for name in HELP:
            self._counter(name)
        r = self.registry
        self.turns = Counter("chatd_worker_turns", "turns ended, by outcome (finished, failed, "
                             "interrupted: partial saved, lost: lease lost)", ["outcome"], registry=r)
        self.failures = Counter("chatd_worker_turn_failures", "turn failures by ChatError kind and "
                                "provider (retried or errored, as SQL decided)", ["kind", "provider"],
                                registry=r)
        self.in_flight = Gauge("chatd_worker_turns_in_flight", "turns running now", registry=r)
        self.first_token = Histogram("chatd_worker_time_to_first_token_seconds",
                                     "claim to first streamed token", ["provider"],
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.turn_duration = Histogram("chatd_worker_turn_duration_seconds",
                                       "claim to end of the turn, by outcome", ["outcome"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.db_latency = Histogram("chatd_worker_db_call_duration_seconds",
                                    "database call latency by chatd function", ["call"],
                                    buckets=_DB_BUCKETS, registry=r)
        self.parts = Counter("chatd_worker_stream_parts_published",
                             "stream parts published (publish_parts and batched finishes)",
                             registry=r)
        self.claim_batch = Histogram("chatd_worker_claim_batch_size",
                                     "chats claimed by one acquire_chats call",
                                     buckets=_BATCH_BUCKETS, registry=r)

    def _counter(self, name: str) -> Counter:
        counter = self._plain.get(name)
        if counter is None:
            counter = Counter(name.removesuffix("_total"), HELP.get(name, name), registry=self.registry)
            self._plain[name] = counter
        return counter

    def inc(self, name: str, amount: int = 1) -> None:
        self._counter(name).inc(amount)

    def turn_ended(self, outcome: str, seconds: float) -> None:
        self.turns.labels(outcome).inc()
        self.turn_duration.labels(outcome).observe(seconds)

    def failure(self, kind: object, provider: str | None) -> None:
        self.failures.labels(str(getattr(kind, "value", kind)), provider or "").inc()

    def published(self, parts: int) -> None:
        """One successful publish of ``parts`` stream parts."""
        self.inc("chatd_worker_part_flushes_total")
        self.parts.inc(parts)

    def db_call(self, query: str, seconds: float) -> None:
        match = _CALL.search(query)
        self.db_latency.labels(match.group(1) if match else "other").observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


Probe = Callable[[], Awaitable[tuple[bool, str]]]


async def serve_metrics(
    metrics: Metrics, host: str, port: int, *,
    healthz: Probe | None = None, readyz: Probe | None = None,
) -> asyncio.Server:
    """``/metrics``, and ``/healthz`` / ``/readyz`` answered by the probes
    (200 with "ok", else 503 with the reason; a missing probe answers 200)."""

    async def probe(check: Probe | None) -> tuple[bytes, bytes, bytes]:
        ok, why = (True, "ok") if check is None else await check()
        return (b"200 OK" if ok else b"503 Service Unavailable"), b"text/plain", why.encode() + b"\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readline()
            while (await reader.readline()).strip():
                pass  # skip headers
            path = (request.split(b" ")[1:2] or [b""])[0].split(b"?")[0]
            if path == b"/metrics":
                status, ctype, body = b"200 OK", CONTENT_TYPE_LATEST.encode(), metrics.render()
            elif path in (b"/healthz", b"/readyz"):
                status, ctype, body = await probe(healthz if path == b"/healthz" else readyz)
            else:
                status, ctype, body = b"404 Not Found", b"text/plain", b"not found\n"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
                + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
