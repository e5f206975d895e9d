"""Worker metrics (prometheus-client) and the health probes on the metrics
port: the names and types of docs/deploy/metrics.md, a finished and a failed
turn counted with their labels, /healthz and /readyz."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from repo_support import REPO_ROOT
from worker_support import running_worker, status_is, wait_until, worker_config

from chatd.metrics import Metrics
from chatd.testing import Factory
from chatd.testing.fakellm import FakeLLM, FakeUsage, HttpError, Text

# name -> type, as the exposition format names them (counters without _total)
EXPECTED = {
    "chatd_worker_turns": "counter",
    "chatd_worker_turn_failures": "counter",
    "chatd_worker_turns_in_flight": "gauge",
    "chatd_worker_time_to_first_token_seconds": "histogram",
    "chatd_worker_turn_duration_seconds": "histogram",
    "chatd_worker_db_call_duration_seconds": "histogram",
    "chatd_worker_listener_reconnects": "counter",
    "chatd_worker_stream_parts_published": "counter",
    "chatd_worker_claim_batch_size": "histogram",
    "chatd_worker_db_calls": "counter",
    "chatd_worker_db_timeouts": "counter",
    "chatd_worker_turns_claimed": "counter",
    "chatd_worker_leases_lost": "counter",
    "chatd_worker_part_flushes": "counter",
    "chatd_worker_finish_batches": "counter",
    "chatd_worker_heartbeats": "counter",
    "chatd_worker_wakeups": "counter",
    "chatd_worker_recovered": "counter",
    "chatd_worker_janitor_runs": "counter",
    "chatd_worker_write_retries": "counter",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "python_info": "gauge",
}


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metric_names_and_types() -> None:
    found = {name: f.type for name, f in families(Metrics().render().decode()).items()}
    assert {name: found.get(name) for name in EXPECTED} == EXPECTED


def test_every_chatd_metric_is_documented() -> None:
    doc = (REPO_ROOT / "docs" / "deploy" / "metrics.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(chatd_worker_\w+)`", doc))
    chatd = {n for n in EXPECTED if n.startswith("chatd_")}
    assert {n for n in chatd if n not in documented and n + "_total" not in documented} == set()


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = (await reader.read()).decode()
    writer.close()
    head, _, body = raw.partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


async def test_turns_failures_and_probes_on_the_metrics_port(
    db: str, factory: Factory, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    provider = factory.provider(kind="openai", base_url=fake.openai_base_url, api_key_env="FAKE_KEY",
                                name="fakeprov")
    model = factory.model_config(provider=provider)
    org = factory.org()
    owner = factory.user(org=org)
    port = free_port()
    async with running_worker(worker_config(db, metrics_port=port)) as worker:
        # streamed for longer than the flush interval: parts are published
        fake.script(Text("hello there", chunks=3, delay=0.06, usage=FakeUsage(5, 2)))
        ok = factory.chat(owner, org=org, model=model, text="hi")
        await wait_until(lambda: status_is(db, ok, "waiting"), what="the turn to finish")
        fake.script(HttpError(401))
        bad = factory.chat(owner, org=org, model=model, text="hi")
        await wait_until(lambda: status_is(db, bad, "error"), what="the turn to fail")
        assert await http_get(port, "/healthz") == (200, "ok\n")
        assert await http_get(port, "/readyz") == (200, "ok\n")
        status, body = await http_get(port, "/metrics")
        assert status == 200
        got = families(body)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in got.values() for s in f.samples}
        assert samples[("chatd_worker_turns_total", (("outcome", "finished"),))] == 1
        assert samples[("chatd_worker_turns_total", (("outcome", "failed"),))] == 1
        assert samples[("chatd_worker_turn_failures_total",
                        (("kind", "auth"), ("provider", "fakeprov")))] == 1
        assert samples[("chatd_worker_time_to_first_token_seconds_count",
                        (("provider", "fakeprov"),))] == 1
        assert samples[("chatd_worker_stream_parts_published_total", ())] >= 1
        assert samples[("chatd_worker_claim_batch_size_count", ())] == 2
        assert samples[("chatd_worker_db_call_duration_seconds_count", (("call", "acquire_chats"),))] >= 1
        assert samples[("chatd_worker_turns_in_flight", ())] == 0
        # a dead database: not ready, still alive (the listener notices later)
        await worker.pool.close()
        status, body = await http_get(port, "/readyz")
        assert status == 503 and body.startswith("database:")


def test_the_sample_dashboard_queries_only_exported_metrics() -> None:
    import json

    dashboard = json.loads((REPO_ROOT / "docs" / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count|total)$", "", m) for e in exprs
            for m in re.findall(r"\b((?:chatd_worker|process)_\w+)", e)}
    assert used and used <= set(EXPECTED)
