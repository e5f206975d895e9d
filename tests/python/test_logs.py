"""Structured logs: JSON lines of a worker carry chat_id, lease, worker_id,
provider and error_kind as fields, not only inside the message."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
from worker_support import running_worker, status_is, wait_until, worker_config

from chatd.logs import bind, make_handler
from chatd.testing import Factory
from chatd.testing.fakellm import FakeLLM, HttpError


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = make_handler("json", buffer)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_bound_fields_are_json_fields_and_an_explicit_extra_wins(json_lines: io.StringIO) -> None:
    async def task() -> None:
        bind(chat_id="c1", lease=3)
        logging.getLogger("chatd.test").info("hello", extra={"lease": 4})

    asyncio.run(task())
    logging.getLogger("chatd.test").info("outside")
    first, second = (json.loads(line) for line in json_lines.getvalue().splitlines())
    assert (first["msg"], first["chat_id"], first["lease"]) == ("hello", "c1", 4)
    assert "chat_id" not in second, "fields stay in the task that bound them"


async def test_a_failed_turn_logs_its_fields(
    db: str, factory: Factory, fake: FakeLLM, json_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    provider = factory.provider(kind="openai", base_url=fake.openai_base_url, api_key_env="FAKE_KEY",
                                name="fakeprov")
    model = factory.model_config(provider=provider)
    org = factory.org()
    fake.script(HttpError(401))
    chat = factory.chat(factory.user(org=org), org=org, model=model, text="hi")
    async with running_worker(worker_config(db, worker_id="w-logs")):
        await wait_until(lambda: status_is(db, chat, "error"), what="the turn to fail")
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    [failure] = [e for e in lines if e.get("error_kind")]
    assert {k: failure[k] for k in ("chat_id", "lease", "worker_id", "provider", "error_kind")} == {
        "chat_id": str(chat), "lease": 1, "worker_id": "w-logs", "provider": "fakeprov",
        "error_kind": "auth",
    }
    started = [e for e in lines if "started" in e["msg"]]
    assert started and started[0]["worker_id"] == "w-logs" and "chat_id" not in started[0]
