"""`make demo` runs in CI: `chatd demo` on its own throwaway database and the
scripted LLM, and on an existing database given by DATABASE_URL. The 60 s
subprocess timeout is the issue's hard limit, not a performance assertion."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def run_demo(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DATABASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "chatd", "demo", "--llm", "fake", "--no-serve"],
        capture_output=True, text=True, env={**environment, **env}, timeout=60, check=False,
    )


def assert_demo_output(stdout: str) -> None:
    assert "chatd keeps every chat in PostgreSQL" in stdout, "the streamed answer is printed"
    assert "queued=True" in stdout, "the second message of the queue chat was queued"
    assert re.search(r"interrupt sent after \d+ streamed characters", stdout)
    assert "retry: attempt 1 failed (rate_limit)" in stdout
    table = stdout.split("final states:")[1]
    assert "model asked for mcp__example__add({'a': 2, 'b': 3})" in stdout
    assert "tool result '5" in stdout, "the example MCP server really ran the call"
    assert "the demo answered 'blue' (submit_tool_results): chat pending" in stdout
    assert "model asked for spawn_agent" in stdout and "'Name a colour of the rainbow.' waiting" in stdout
    assert "tool result '13'" in stdout and "tool result 'indigo'" in stdout, "the sub-agents' answers"
    for name, messages in (("stream", 2), ("queue", 4), ("interrupt", 2), ("retry", 2),
                           ("mcp tool", 3), ("client tool", 3), ("sub-agents", 3)):
        assert re.search(rf"^\s+{name}\s+waiting\s+{messages}\s", table, re.MULTILINE), (name, table)


def test_demo_runs_end_to_end_on_a_throwaway_database() -> None:
    result = run_demo()
    assert result.returncode == 0, result.stdout + result.stderr
    assert_demo_output(result.stdout)
    assert "removed the throwaway PostgreSQL" in result.stdout


def test_demo_uses_database_url_when_set(db: str) -> None:
    result = run_demo(DATABASE_URL=db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_demo_output(result.stdout)
    assert "database: DATABASE_URL" in result.stdout


def test_demo_then_serves_the_web_page_and_the_api_until_interrupted() -> None:
    import signal
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("DATABASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatd", "demo", "--llm", "fake", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if "chatd serve: open " in line:
                break
        match = re.search(r"open (http://127\.0\.0\.1:\d+/)#token=(\S+)", "".join(lines))
        assert match, "".join(lines)
        url, token = match.groups()
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "<title>chatd</title>" in page.text
        chats = httpx.get(url + "api/chats", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        # four chats, three agent chats, and the two sub-agent chats of one of them
        assert chats.status_code == 200 and len(chats.json()["chats"]) == 9
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0, rest
        assert "worker stopped" in rest and "removed the throwaway PostgreSQL" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
