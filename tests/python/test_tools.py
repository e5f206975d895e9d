"""Agent turns with tools (issue 13, docs/tools.md): the worker's tool loop
against a real MCP server (examples/mcp_server.py, over stdio and over
streamable HTTP), client tools answered through submit_tool_results,
parallel calls, timeouts, the step limit, and SIGKILL at each point of the
loop (exactly the uncommitted work is redone)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Jsonb
from worker_support import (
    chat_row,
    messages,
    running_worker,
    status_is,
    text_of,
    wait_until,
    worker_config,
    worker_process,
)

from chatd.client import Client, ToolCallNotPending, ToolCallsEvent
from chatd.testing import Factory, as_role
from chatd.testing.fakellm import FakeLLM, Hang, Text

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mcp_server.py"
ANTHROPIC_KEY_ENV = "CHATD_TEST_ANTHROPIC_KEY"


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, "sk-test-anthropic")


@pytest.fixture
def calls_log(tmp_path: Path) -> Path:
    """Where the example server logs every call it really ran."""
    return tmp_path / "calls.jsonl"


def logged_calls(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stdio_command(log: Path) -> str:
    return f"env MCP_EXAMPLE_LOG={shlex.quote(str(log))} {shlex.quote(sys.executable)} {shlex.quote(str(EXAMPLE))}"


def tool_chat(
    conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, *, kind: str = "openai-compat",
    tools: list[dict[str, Any]] | None = None, mcp: list[str] | None = None, text: str = "use your tools",
) -> UUID:
    org = factory.org()
    owner = factory.user(org=org)
    base_url = fake.anthropic_base_url if kind == "anthropic" else fake.openai_base_url
    provider = factory.provider(kind=kind, base_url=base_url,
                                api_key_env=ANTHROPIC_KEY_ENV if kind == "anthropic" else None)
    model = factory.model_config(provider=provider, input_price=1, output_price=2)
    row = conn.execute(
        "SELECT chatd.create_chat(%s, %s, %s, %s, p_tools => %s, p_mcp_servers => %s)",
        (owner, org, Jsonb(text), model, Jsonb(tools or []), mcp),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def add_server(conn: psycopg.Connection[Any], name: str, *, url: str | None = None,
               command: str | None = None) -> None:
    conn.execute("SELECT chatd.admin_upsert_mcp_server(%s, p_url => %s, p_command => %s)", (name, url, command))


def call(call_id: str, name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "name": name, "input": arguments}


async def roles(db: str, chat: UUID) -> list[str]:
    return [m["role"] for m in await messages(db, chat) if m["role"] != "system"]


async def tool_results(db: str, chat: UUID) -> dict[str, dict[str, Any]]:
    return {p["tool_call_id"]: p for m in await messages(db, chat, "tool") for p in m["content"]}


@pytest.mark.parametrize("kind", ["openai-compat", "anthropic"])
async def test_a_multi_step_mcp_turn_over_stdio(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, calls_log: Path, kind: str
) -> None:
    add_server(conn, "ex", command=stdio_command(calls_log))
    chat = tool_chat(conn, factory, fake, kind=kind, mcp=["ex"])
    fake.script(
        Text("adding", tool_calls=(call("c1", "mcp__ex__add", a=1, b=2),)),
        Text("", tool_calls=(call("c2", "mcp__ex__echo", text="three"),)),
        Text("the answer is 3"),
    )
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the agent turn to finish")
    assert (await chat_row(db, chat))["status"] == "waiting"
    assert await roles(db, chat) == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    steps = await messages(db, chat, "assistant")
    assert [s["finish_reason"] for s in steps] == ["tool_calls", "tool_calls", "stop"]
    assert all(s["total_cost_micros"] is not None for s in steps), "every step is billed"
    assert steps[1]["content"] == [{"type": "tool-call", "tool_call_id": "c2", "tool_name": "mcp__ex__echo",
                                    "input": {"text": "three"}, "source": "mcp"}], "a step of only a call is valid"
    results = await tool_results(db, chat)
    assert (results["c1"]["output"], results["c1"]["is_error"]) == ("3.0", False)
    assert results["c2"]["output"] == "three"
    offered = fake.requests[0].body["tools"]
    names = [t["function"]["name"] if kind != "anthropic" else t["name"] for t in offered]
    assert "mcp__ex__add" in names and "mcp__ex__sleep" in names
    assert [c["tool"] for c in logged_calls(calls_log)] == ["add", "echo"]
    assert [c["tool_call_id"] for c in logged_calls(calls_log)] == ["c1", "c2"], "the call id goes along"
    # the model saw the result in its wire's own format
    second = json.dumps(fake.requests[1].messages)
    assert ('"tool_call_id": "c1"' in second) if kind != "anthropic" else ('"tool_use_id": "c1"' in second)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server(calls_log: Path) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--http", "--port", str(port)],
        env={**os.environ, "MCP_EXAMPLE_LOG": str(calls_log)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_an_mcp_turn_over_streamable_http(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, http_server: str, calls_log: Path
) -> None:
    add_server(conn, "web", url=http_server)
    chat = tool_chat(conn, factory, fake, mcp=["web"])
    fake.script(Text("", tool_calls=(call("h1", "mcp__web__add", a=20, b=22),)), Text("42"))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the agent turn to finish")
    assert (await tool_results(db, chat))["h1"]["output"] == "42.0"
    assert text_of((await messages(db, chat, "assistant"))[-1]["content"]) == "42"
    assert [c["tool"] for c in logged_calls(calls_log)] == ["add"]


async def test_the_calls_of_one_step_run_in_parallel(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, calls_log: Path
) -> None:
    add_server(conn, "ex", command=stdio_command(calls_log))
    chat = tool_chat(conn, factory, fake, mcp=["ex"])
    fake.script(
        Text("", tool_calls=tuple(call(f"p{i}", "mcp__ex__sleep", seconds=1) for i in range(3))),
        Text("rested"),
    )
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the agent turn to finish")
    tool_rows = await messages(db, chat, "tool")
    assert len(tool_rows) == 3, "each result is committed on its own"
    step = (await messages(db, chat, "assistant"))[0]
    elapsed = (max(m["created_at"] for m in tool_rows) - step["created_at"]).total_seconds()
    assert elapsed < 2.5, f"three 1-second calls took {elapsed:.1f} s: not in parallel"


async def test_a_client_tool_round_trip(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    ask = {"name": "ask_user", "description": "asks the user", "input_schema": {"type": "object"}}
    chat = tool_chat(conn, factory, fake, tools=[ask])
    owner = conn.execute("SELECT owner_id FROM chatd.chats WHERE id = %s", (chat,)).fetchone()[0]  # type: ignore[index]
    fake.script(Text("", tool_calls=(call("k1", "ask_user", question="favourite colour?"),)), Text("blue it is"))
    async with running_worker(worker_config(db)), await Client.connect(as_role(db, "app")) as client:
        async with client.subscribe(owner, chat) as sub:
            event = await asyncio.wait_for(_first_tool_calls(sub), 30)
        assert [(c["tool_call_id"], c["input"]) for c in event.calls] == [("k1", {"question": "favourite colour?"})]
        with pytest.raises(ToolCallNotPending):
            await client.submit_tool_results(owner, chat, [{"tool_call_id": "nope", "output": "x"}])
        result = await client.submit_tool_results(owner, chat, [{"tool_call_id": "k1", "output": "blue"}])
        assert result["status"] == "pending"
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to continue")
    assert text_of((await messages(db, chat, "assistant"))[-1]["content"]) == "blue it is"
    assert '"blue"' in json.dumps(fake.requests[-1].messages)


async def test_a_slow_tool_times_out_with_an_error_result_the_model_sees(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, calls_log: Path
) -> None:
    conn.execute("UPDATE chatd.settings SET tool_timeout = '1 second'")
    add_server(conn, "ex", command=stdio_command(calls_log))
    chat = tool_chat(conn, factory, fake, mcp=["ex"])
    fake.script(Text("", tool_calls=(call("t1", "mcp__ex__sleep", seconds=30),)), Text("too slow"))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the agent turn to finish")
    result = (await tool_results(db, chat))["t1"]
    assert result["is_error"] is True and "timed out" in result["output"]
    assert "timed out" in json.dumps(fake.requests[-1].messages)


async def test_an_unreachable_mcp_server_gives_error_results_not_a_stuck_chat(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    add_server(conn, "down", url=f"http://127.0.0.1:{_free_port()}/mcp")
    chat = tool_chat(conn, factory, fake, mcp=["down"])
    fake.script(Text("", tool_calls=(call("d1", "mcp__down__add", a=1, b=1),)), Text("no tools today"))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the agent turn to finish")
    result = (await tool_results(db, chat))["d1"]
    assert result["is_error"] is True and "unknown tool" in result["output"]


async def test_the_step_limit_ends_the_turn_with_a_clear_error(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, calls_log: Path
) -> None:
    conn.execute("UPDATE chatd.settings SET max_tool_steps = 1")
    add_server(conn, "ex", command=stdio_command(calls_log))
    chat = tool_chat(conn, factory, fake, mcp=["ex"])
    fake.script(
        Text("", tool_calls=(call("s1", "mcp__ex__echo", text="one"),)),
        Text("", tool_calls=(call("s2", "mcp__ex__echo", text="two"),)),
    )
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the agent turn to end")
    row = await chat_row(db, chat)
    assert (row["status"], row["last_error"]["kind"]) == ("error", "step_limit")
    assert [c["text"] for c in (x["arguments"] for x in logged_calls(calls_log))] == ["one"]


# ------------------------------------------------------------------ SIGKILL in the loop


async def _kill_and_recover(proc: subprocess.Popen[str], conn: psycopg.Connection[Any], worker_id: str) -> None:
    proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 30)
    conn.execute("SELECT chatd_test.make_stale(%s)", (worker_id,))
    assert conn.execute("SELECT chatd.recover_stale_chats()").fetchone() == (1,)


async def test_sigkill_between_a_committed_call_and_its_result_reruns_only_that_call(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, calls_log: Path
) -> None:
    add_server(conn, "ex", command=stdio_command(calls_log))
    chat = tool_chat(conn, factory, fake, mcp=["ex"])
    fake.script(
        Text("", tool_calls=(call("f1", "mcp__ex__echo", text="fast"), call("s1", "mcp__ex__sleep", seconds=2))),
        Text("done"),
    )
    proc = worker_process(db, "doomed")
    try:
        # f1's result is committed, s1 is running: the worker dies
        await wait_until(lambda: _has_result(db, chat, "f1"), what="the fast call's result")
        await wait_until(lambda: _logged(calls_log, "sleep"), what="the slow call to start")
        await _kill_and_recover(proc, conn, "doomed")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(await messages(db, chat, "assistant")) == 1, "the committed step is kept"
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the resumed turn to finish")
    assert await roles(db, chat) == ["user", "assistant", "tool", "tool", "assistant"]
    assert sorted(c["tool_call_id"] for c in logged_calls(calls_log)) == ["f1", "s1", "s1"], (
        "the call with a committed result never runs again; the one in flight runs again"
    )
    assert len([r for r in fake.requests if r.path.endswith(("completions", "messages"))]) == 2


async def test_sigkill_between_a_result_and_the_next_step_redoes_only_the_step(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, calls_log: Path
) -> None:
    add_server(conn, "ex", command=stdio_command(calls_log))
    chat = tool_chat(conn, factory, fake, mcp=["ex"])
    fake.script(Text("", tool_calls=(call("r1", "mcp__ex__add", a=2, b=2),)), Hang(60))
    proc = worker_process(db, "doomed")
    try:
        await wait_until(lambda: _has_result(db, chat, "r1"), what="the result")
        await wait_until(lambda: _requests(fake, 2), what="the next step to start")
        await _kill_and_recover(proc, conn, "doomed")
    finally:
        if proc.poll() is None:
            proc.kill()
    fake.script(Text("four"))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the resumed turn to finish")
    assert await roles(db, chat) == ["user", "assistant", "tool", "assistant"]
    assert [c["tool_call_id"] for c in logged_calls(calls_log)] == ["r1"], "a committed result is never redone"
    assert text_of((await messages(db, chat, "assistant"))[-1]["content"]) == "four"


async def _first_tool_calls(sub: Any) -> ToolCallsEvent:
    async for event in sub:
        if isinstance(event, ToolCallsEvent):
            return event
    raise AssertionError("the subscription ended without a ToolCallsEvent")


async def _has_result(db: str, chat: UUID, call_id: str) -> bool:
    return call_id in await tool_results(db, chat)


async def _logged(path: Path, tool: str) -> bool:
    return any(c["tool"] == tool for c in logged_calls(path))


async def _requests(fake: FakeLLM, n: int) -> bool:
    return len(fake.requests) >= n
