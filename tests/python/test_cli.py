"""The client-side commands: chat (against the fake LLM and a real worker),
chats, watch, models, providers, limits."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from chatd import cli
from chatd.config import WorkerConfig
from chatd.testing.fakellm import FakeLLM, FakeUsage, Text
from chatd.worker import Worker

TIMEOUT = 60.0


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def chatd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run a chatd command in-process; returns (status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def chatd_subprocess(db: str, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chatd", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "DATABASE_URL": db, **(env or {})},
    )
    async with asyncio.timeout(TIMEOUT):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def worker(db: str) -> AsyncIterator[Worker]:
    w = Worker(WorkerConfig(database_url=db, worker_id="cli-test", poll_interval=0.2,
                            flush_interval=0.01, heartbeat_interval=1.0))
    task = asyncio.create_task(w.run())
    async with asyncio.timeout(TIMEOUT):
        await w.ready.wait()
    try:
        yield w
    finally:
        w.stop()
        await task


async def configure_fake_model(capsys: pytest.CaptureFixture[str], db: str, fake: FakeLLM) -> None:
    # in a thread: a command runs its own event loop
    code, out, _ = await asyncio.to_thread(chatd, capsys, "providers", "add", "fake", "--kind", "openai-compat",
                         "--base-url", fake.openai_base_url, "--database-url", db)
    assert code == 0 and uuid.UUID(out.strip())
    code, out, _ = await asyncio.to_thread(chatd, capsys, "models", "add", "fake", "fake-model", "--default",
                         "--input-price", "1", "--output-price", "2", "--database-url", db)
    assert code == 0 and uuid.UUID(out.strip())


async def test_chat_streams_the_answer(
    db: str, fake: FakeLLM, worker: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    await configure_fake_model(capsys, db, fake)
    fake.script(Text("Hello from the fake LLM!", chunks=5, usage=FakeUsage(12, 7)))
    code, out, err = await chatd_subprocess(db, "chat", "hi there")
    assert code == 0, err
    assert out == "Hello from the fake LLM!\n"
    assert "tokens: in 12, out 7" in err and "cost $0.000026" in err
    chat_id = uuid.UUID(err.splitlines()[0].removeprefix("chat "))
    assert fake.requests[-1].last_user_text == "hi there"

    # continue the same chat
    fake.script(Text("Second answer.", chunks=2))
    code, out, err = await chatd_subprocess(db, "chat", "--chat", str(chat_id), "and again")
    assert code == 0, err
    assert out == "Second answer.\n"

    # the local user owns it; chats lists it as waiting
    code, out, err = await chatd_subprocess(db, "chats")
    assert code == 0, err
    assert str(chat_id) in out and "waiting" in out

    code, out, err = await chatd_subprocess(db, "watch", str(chat_id), "--json", "--exit-when-idle")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    texts = [e["content"][0]["text"] for e in events if e["event"] == "message"]
    assert texts == ["hi there", "Hello from the fake LLM!", "and again", "Second answer."]
    assert events[-1] == {**events[-1], "event": "status", "status": "waiting"}


async def test_chat_reports_a_failed_turn(
    db: str, fake: FakeLLM, worker: Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    await configure_fake_model(capsys, db, fake)
    code, out, err = await chatd_subprocess(db, "chat", "[[fake: 401]] hello")
    assert code == 1
    assert "the turn failed" in err and "(auth)" in err


def test_chat_refused_by_the_spend_limit(
    db: str, capsys: pytest.CaptureFixture[str], conn: psycopg.Connection[Any]
) -> None:
    code, _, _ = chatd(capsys, "providers", "add", "p", "--kind", "openai-compat",
                       "--base-url", "http://127.0.0.1:9/v1", "--database-url", db)
    code, _, _ = chatd(capsys, "models", "add", "p", "m", "--default", "--database-url", db)
    assert code == 0
    code, out, _ = chatd(capsys, "limits", "set", "--enable", "--default", "0", "--period", "day",
                         "--database-url", db)
    assert (code, out.strip()) == (0, "ok")
    code, _, err = chatd(capsys, "chat", "hi", "--database-url", db)
    assert code == 1 and "spend limit reached" in err

    code, out, _ = chatd(capsys, "limits", "show", "--database-url", db)
    assert code == 0
    assert "limits enabled; default $0 per day" in out
    assert "limit  $0 (default)" in out

    code, out, _ = chatd(capsys, "limits", "set", "--for-user", "local", "--user-limit", "2.5",
                         "--database-url", db)
    assert code == 0
    code, out, _ = chatd(capsys, "limits", "show", "--database-url", db)
    assert "limit  $2.5 (user)" in out


def test_models_providers_and_identities(
    db: str, capsys: pytest.CaptureFixture[str], conn: psycopg.Connection[Any]
) -> None:
    code, _, _ = chatd(capsys, "providers", "add", "acme", "--kind", "openai",
                       "--api-key-env", "ACME_KEY", "--database-url", db)
    assert code == 0
    code, out, _ = chatd(capsys, "providers", "list", "--database-url", db)
    assert "acme" in out and "ACME_KEY" in out
    for model in ("small", "large"):
        code, _, _ = chatd(capsys, "models", "add", "acme", model, "--default",
                           "--input-price", "0.5", "--database-url", db)
        assert code == 0
    code, out, _ = chatd(capsys, "models", "list", "--database-url", db)
    lines = {line.split()[1]: line for line in out.splitlines()[1:]}
    assert " yes " in lines["large"] and " yes " not in lines["small"]  # one default

    code, _, err = chatd(capsys, "models", "add", "nope", "x", "--database-url", db)
    assert code == 1 and "provider" in err

    # a named user that does not exist is an error, not created
    code, _, err = chatd(capsys, "chats", "--user", "ghost", "--database-url", db)
    assert code == 1 and "ghost" in err
    # the local default user and organization are created on first use
    code, out, _ = chatd(capsys, "chats", "--database-url", db)
    assert (code, out.strip()) == (0, "no chats")
    row = conn.execute(
        "SELECT count(*) FROM chatd.organization_members AS om "
        "JOIN chatd.users AS u ON u.id = om.user_id "
        "JOIN chatd.organizations AS o ON o.id = om.organization_id "
        "WHERE u.username = 'local' AND o.name = 'local'"
    ).fetchone()
    assert row == (1,)


def test_providers_api_and_a_models_thinking_budget_are_set_from_the_command_line(
    db: str, capsys: pytest.CaptureFixture[str], conn: psycopg.Connection[Any]
) -> None:
    code, _, _ = chatd(capsys, "providers", "add", "oa", "--kind", "openai", "--api", "responses",
                       "--database-url", db)
    assert code == 0
    code, _, _ = chatd(capsys, "providers", "add", "an", "--kind", "anthropic", "--database-url", db)
    assert code == 0
    code, out, _ = chatd(capsys, "providers", "list", "--database-url", db)
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert " responses " in lines["oa"] and " messages " in lines["an"]
    code, _, err = chatd(capsys, "providers", "add", "bad", "--kind", "anthropic", "--api", "responses",
                         "--database-url", db)
    assert code == 1 and "invalid api" in err

    code, _, _ = chatd(capsys, "models", "add", "an", "claude", "--max-output-tokens", "8192",
                       "--thinking-budget", "2048", "--database-url", db)
    assert code == 0
    row = conn.execute(
        "SELECT thinking_budget_tokens FROM chatd.model_configs WHERE model = 'claude'"
    ).fetchone()
    assert row == (2048,)
    code, _, err = chatd(capsys, "models", "add", "an", "claude", "--max-output-tokens", "2048",
                         "--thinking-budget", "2048", "--database-url", db)
    assert code == 1 and "must be below max_output_tokens (2048)" in err


def test_mcp_add_list_remove(db: str, capsys: pytest.CaptureFixture[str], conn: psycopg.Connection[Any]) -> None:
    code, _, _ = chatd(capsys, "providers", "add", "acme", "--kind", "openai", "--database-url", db)
    code, _, _ = chatd(capsys, "models", "add", "acme", "small", "--database-url", db)
    code, _, _ = chatd(capsys, "mcp", "add", "ex", "--command", "python examples/mcp_server.py",
                       "--secret-env", "EX_TOKEN", "--model", "small", "--database-url", db)
    assert code == 0
    code, out, _ = chatd(capsys, "mcp", "list", "--database-url", db)
    assert "ex" in out and "EX_TOKEN" in out and "small" in out
    code, _, err = chatd(capsys, "mcp", "add", "Bad Name", "--url", "http://x", "--database-url", db)
    assert code == 1
    code, _, _ = chatd(capsys, "mcp", "remove", "ex", "--database-url", db)
    assert code == 0
    assert conn.execute("SELECT count(*) FROM chatd.mcp_servers").fetchone() == (0,)
    assert conn.execute("SELECT mcp_servers FROM chatd.model_configs WHERE model = 'small'").fetchone() == ([],)
