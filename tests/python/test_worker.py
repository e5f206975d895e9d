"""The worker end to end: real PostgreSQL, the real SDKs, the fake LLM server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from worker_support import (
    chat_row,
    messages,
    running_worker,
    status_is,
    text_of,
    wait_until,
    worker_config,
)

from chatd.llm import ChatError, ChatErrorKind
from chatd.testing import Factory, as_role
from chatd.testing.fakellm import FakeLLM, FakeUsage, Hang, HttpError, Text, Truncate
from chatd.worker.turn import Claim, Turn, TurnRun

OPENAI_KEY_ENV = "CHATD_TEST_OPENAI_KEY"
ANTHROPIC_KEY_ENV = "CHATD_TEST_ANTHROPIC_KEY"


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPENAI_KEY_ENV, "sk-test-openai")
    monkeypatch.setenv(ANTHROPIC_KEY_ENV, "sk-test-anthropic")


def model_for(factory: Factory, fake: FakeLLM, kind: str = "openai-compat", **kw: Any) -> UUID:
    base_url = fake.anthropic_base_url if kind == "anthropic" else fake.openai_base_url
    key_env = {"openai": OPENAI_KEY_ENV, "anthropic": ANTHROPIC_KEY_ENV}.get(kind)
    provider = factory.provider(kind=kind, base_url=base_url, api_key_env=key_env)
    return factory.model_config(provider=provider, **kw)


def owner_and_org(factory: Factory) -> tuple[UUID, UUID]:
    org = factory.org()
    return factory.user(org=org), org


def set_settings(conn: psycopg.Connection[Any], **values: str) -> None:
    for name, value in values.items():
        conn.execute(f"UPDATE chatd.settings SET {name} = %s::interval", (value,))


async def stream_parts(dsn: str, chat_id: UUID) -> list[tuple[int, int, list[dict[str, Any]]]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT lease, seq, parts FROM chatd.stream_parts WHERE chat_id = %s ORDER BY lease, seq",
            (chat_id,),
        )
        return list(await cur.fetchall())


@pytest.mark.parametrize("kind", ["openai", "openai-compat", "anthropic"])
async def test_a_turn_streams_in_order_and_finishes_with_usage_and_cost(
    db: str, factory: Factory, fake: FakeLLM, kind: str
) -> None:
    owner, org = owner_and_org(factory)
    model = model_for(factory, fake, kind, input_price=3, output_price=15)
    reply = "PostgreSQL keeps the truth and the worker does the talking."
    fake.script(Text(reply, chunks=8, delay=0.01, usage=FakeUsage(input_tokens=120, output_tokens=40)))
    chat = factory.chat(owner, org=org, model=model, text="tell me about chatd")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the turn to finish")
    [assistant] = await messages(db, chat, "assistant")
    assert text_of(assistant["content"]) == reply
    assert (assistant["input_tokens"], assistant["output_tokens"]) == (120, 40)
    # 120 * $3/M + 40 * $15/M = 360 + 600 micro-dollars
    assert assistant["total_cost_micros"] == 960
    assert assistant["provider_response_id"]
    parts = await stream_parts(db, chat)
    assert [seq for _, seq, _ in parts] == list(range(len(parts))), "seqs are gapless and ordered"
    streamed = "".join(text_of(p) for _, _, p in parts)
    # the parts stream the reply as it comes; what was not yet published when
    # the turn finished is in the final message only (committed with the status)
    assert parts and reply.startswith(streamed), "the streamed parts are the start of the reply"
    sent = fake.requests[-1]
    assert sent.last_user_text == "tell me about chatd"


async def test_the_prompt_is_the_visible_history_in_order(db: str, factory: Factory, fake: FakeLLM) -> None:
    owner, org = owner_and_org(factory)
    chat = factory.chat(owner, org=org, model=model_for(factory, fake), text="first")
    factory.message(chat, role="assistant", text="first answer")
    factory.message(chat, role="user", text="second")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the turn to finish")
    sent = [(m["role"], _plain(m["content"])) for m in fake.requests[-1].messages]
    assert sent == [("user", "first"), ("assistant", "first answer"), ("user", "second")]


def _plain(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


FAILURES = [
    # response, expected status, kind, retryable
    (HttpError(429, headers={"retry-after": "2"}), "pending", "rate_limit"),
    (HttpError(529, error_type="overloaded_error"), "pending", "overloaded"),
    (HttpError(503), "pending", "overloaded"),
    (HttpError(500), "pending", "generic"),
    (HttpError(401), "error", "auth"),
    # a one-message chat has nothing to compact: the error stands
    (HttpError(400, error_type="context_length_exceeded",
               message="This model's maximum context length is 8192 tokens"), "error", "context_length"),
    (HttpError(400, error_type="invalid_request_error", message="Unsupported parameter: 'top_k'"), "error", "config"),
    (Truncate("half a sent", after_chunks=2), "pending", "timeout"),
]


@pytest.mark.parametrize(("response", "status", "kind"), FAILURES,
                         ids=[f"{f[0].__class__.__name__}-{getattr(f[0], 'status', '')}-{f[2]}" for f in FAILURES])
async def test_each_provider_failure_leads_to_its_retry_or_error_state(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM,
    response: Any, status: str, kind: str,
) -> None:
    set_settings(conn, backoff_base="30 seconds", backoff_cap="60 seconds")  # no re-claim during the test
    owner, org = owner_and_org(factory)
    fake.script(response)
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: _failed(db, chat), what="the failure to be recorded")
    row = await chat_row(db, chat)
    assert row["status"] == status
    assert row["last_error"]["kind"] == kind
    assert row["last_error"]["retryable"] is (status == "pending")
    if status == "pending":
        assert row["attempt"] == 1
        assert row["retry_in"] > timedelta(seconds=25), "backoff base 30s schedules the retry"
    assert await messages(db, chat, "assistant") == [], "a failed turn saves no assistant message"


async def test_a_retry_after_longer_than_the_backoff_is_honoured(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    set_settings(conn, backoff_base="1 second")
    owner, org = owner_and_org(factory)
    fake.script(HttpError(429, headers={"retry-after-ms": "40000"}))
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: _failed(db, chat), what="the failure to be recorded")
    row = await chat_row(db, chat)
    assert row["retry_in"] > timedelta(seconds=35), "retry-after-ms floors the 1 s backoff"


async def _failed(dsn: str, chat: UUID) -> bool:
    """The turn failed once: an error recorded (as a retry or as the end)."""
    return (await chat_row(dsn, chat))["last_error"] is not None


async def test_a_truncated_stream_is_retried_not_saved(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    set_settings(conn, backoff_base="50 milliseconds", backoff_cap="100 milliseconds")
    owner, org = owner_and_org(factory)
    fake.script(Truncate("this will be cut", after_chunks=2), Text("the whole answer"))
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the retried turn to finish")
    [assistant] = await messages(db, chat, "assistant")
    assert text_of(assistant["content"]) == "the whole answer"
    assert len(fake.requests) == 2
    row = await chat_row(db, chat)
    assert row["last_error"] is None


async def test_no_first_chunk_within_the_startup_timeout_is_a_retryable_startup_timeout(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    set_settings(conn, startup_timeout="300 milliseconds", backoff_base="30 seconds")
    owner, org = owner_and_org(factory)
    fake.script(Hang(5))
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: _failed(db, chat), what="the startup timeout")
    row = await chat_row(db, chat)
    assert row["status"] == "pending"
    assert row["last_error"]["kind"] == "startup_timeout"


async def test_a_missing_api_key_errors_the_chat_not_the_worker(
    db: str, factory: Factory, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(OPENAI_KEY_ENV)
    owner, org = owner_and_org(factory)
    broken = factory.chat(owner, org=org, model=model_for(factory, fake, "openai"))
    fine = factory.chat(owner, org=org, model=model_for(factory, fake))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, broken, "error"), what="the missing key error")
        await wait_until(lambda: status_is(db, fine, "waiting"), what="the other chat to finish")
    row = await chat_row(db, broken)
    assert row["last_error"]["kind"] == "missing_key"
    assert OPENAI_KEY_ENV in row["last_error"]["message"]


async def test_interrupt_mid_stream_cancels_the_turn_and_keeps_the_partial_message(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    owner, org = owner_and_org(factory)
    words = " ".join(f"word{i}" for i in range(200))
    fake.script(Text(words, chunks=200, delay=0.02))
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    async with running_worker(worker_config(db, heartbeat_interval=30)) as worker:
        await wait_until(lambda: _has_parts(db, chat), what="the first streamed part")
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await conn.execute("SELECT chatd.interrupt_chat(%s, %s)", (owner, chat))
        # heartbeat is 30 s away: only the per-chat notification can cancel it this fast
        await wait_until(lambda: _turn_gone(worker, chat), timeout=10, what="the turn to be cancelled")
    assert (await chat_row(db, chat))["status"] == "waiting"
    [partial] = await messages(db, chat, "assistant")
    saved = text_of(partial["content"])
    assert saved and words.startswith(saved) and saved != words


async def test_deleting_a_chat_mid_stream_stops_its_turn_and_writes_nothing(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    owner, org = owner_and_org(factory)
    fake.script(Text(" ".join(f"word{i}" for i in range(200)), chunks=200, delay=0.02))
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    async with running_worker(worker_config(db, heartbeat_interval=30)) as worker:
        await wait_until(lambda: _has_parts(db, chat), what="the first streamed part")
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await conn.execute("SELECT chatd.delete_chat(%s, %s)", (owner, chat))
        # heartbeat is 30 s away: the "deleted" hint (lease bumped) cancels it
        await wait_until(lambda: _turn_gone(worker, chat), timeout=10, what="the turn to be cancelled")
    row = await chat_row(db, chat)
    assert (row["status"], row["worker_id"]) == ("waiting", None)
    assert await messages(db, chat, "assistant") == []
    assert await stream_parts(db, chat) == []


async def _has_parts(dsn: str, chat: UUID) -> bool:
    return bool(await stream_parts(dsn, chat))


async def _turn_gone(worker: Any, chat: UUID) -> bool:
    return chat not in worker.turns


async def test_a_worker_that_lost_its_lease_writes_nothing(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    owner, org = owner_and_org(factory)
    fake.script(Text(" ".join(["slow"] * 100), chunks=100, delay=0.02))
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    async with running_worker(worker_config(db, heartbeat_interval=0.2, recover_interval=60)) as worker:
        await wait_until(lambda: _has_parts(db, chat), what="the turn to stream")
        first_lease = (await chat_row(db, chat))["lease"]
        # Another worker takes the turn over: recovered as stale, then claimed.
        conn.execute("UPDATE chatd.settings SET stale_after = '1 second', heartbeat_interval = '100 ms'")
        worker_id = (await chat_row(db, chat))["worker_id"]
        with conn.transaction():  # the worker's own heartbeat waits until the recovery committed
            conn.execute("SELECT chatd_test.make_stale(%s)", (worker_id,))
            assert conn.execute("SELECT chatd.recover_stale_chats()").fetchone() == (1,)
        [(stolen_id, stolen_lease, *_)] = conn.execute(
            "SELECT * FROM chatd.acquire_chats('thief', 1)"
        ).fetchall()
        assert stolen_id == chat and stolen_lease > first_lease
        await wait_until(lambda: _turn_gone(worker, chat), what="the old turn to stop")
    row = await chat_row(db, chat)
    assert (row["status"], row["worker_id"], row["lease"]) == ("running", "thief", stolen_lease)
    assert await messages(db, chat, "assistant") == []
    parts = await stream_parts(db, chat)
    assert all(lease == first_lease for lease, _, _ in parts)


async def test_listener_reconnects_after_its_backend_is_terminated_and_loses_no_turn(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    owner, org = owner_and_org(factory)
    model = model_for(factory, fake)
    # Polling is 60 s away: only a re-armed LISTEN or the post-reconnect rescan can pick chats up.
    async with running_worker(worker_config(db, poll_interval=60)) as worker:
        listener_pid = _listener_pid(conn)
        conn.execute("SELECT pg_terminate_backend(%s)", (listener_pid,))
        during = factory.chat(owner, org=org, model=model, text="sent while deaf")
        await wait_until(lambda: _new_listener(conn, listener_pid), what="a new LISTEN connection")
        after = factory.chat(owner, org=org, model=model, text="sent after reconnect")
        await wait_until(lambda: status_is(db, during, "waiting"), what="the chat sent while deaf")
        await wait_until(lambda: status_is(db, after, "waiting"), what="the chat sent after")
        assert worker.metrics.counters["chatd_worker_listener_reconnects_total"] >= 1
    for chat in (during, after):
        assert len(await messages(db, chat, "assistant")) == 1


def _listener_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'chatd-listener%%' "
        "AND datname = current_database()"
    ).fetchone()
    assert row is not None, "no listener connection"
    return int(row[0])


async def _new_listener(conn: psycopg.Connection[Any], old_pid: int) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'chatd-listener%%' "
        "AND datname = current_database() AND pid <> %s AND state = 'idle'",
        (old_pid,),
    ).fetchone()
    return bool(row and row[0])


async def test_sigterm_drains_and_releases_an_unfinished_turn(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    owner, org = owner_and_org(factory)
    fake.script(Text(" ".join(["long"] * 300), chunks=300, delay=0.05))
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatd", "worker", "--database-url", as_role(db, "worker"), "--worker-id", "drained",
         "--shutdown-grace", "0.5", "--poll-interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ},
    )
    try:
        await wait_until(lambda: _has_parts(db, chat), what="the subprocess worker to stream")
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "released 1 unfinished turn" in stderr
    row = await chat_row(db, chat)
    assert (row["status"], row["worker_id"]) == ("pending", None)
    assert await messages(db, chat, "assistant") == []


async def test_a_turn_that_finishes_within_the_grace_period_is_saved_on_sigterm(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    owner, org = owner_and_org(factory)
    fake.script(Text("short and sweet", chunks=10, delay=0.1))
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatd", "worker", "--database-url", as_role(db, "worker"), "--shutdown-grace", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        await wait_until(lambda: _has_parts(db, chat), what="the subprocess worker to stream")
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert (await chat_row(db, chat))["status"] == "waiting"
    [assistant] = await messages(db, chat, "assistant")
    assert text_of(assistant["content"]) == "short and sweet"


def test_worker_refuses_to_start_without_the_schema(pg: Any) -> None:
    dsn = pg.create_database("chatd_no_schema")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "chatd", "worker", "--database-url", dsn],
            capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        pg.drop_database("chatd_no_schema")
    assert result.returncode == 1
    assert "run `chatd migrate` first" in result.stderr


def test_worker_refuses_to_start_with_a_bad_password(db: str) -> None:
    bad = psycopg.conninfo.make_conninfo(db, user="no_such_role")
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "worker", "--database-url", bad],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 3  # Exit.UNREACHABLE: the login was refused (issue 17)
    assert "cannot use the database" in result.stderr


def test_worker_help_documents_every_setting() -> None:
    from chatd.config import OPTIONS

    result = subprocess.run(
        [sys.executable, "-m", "chatd", "worker", "--help"], capture_output=True, text=True, check=True
    )
    for option in OPTIONS:
        assert option.env in result.stdout, option.env
        assert "--" + option.name.replace("_", "-") in result.stdout


async def test_a_late_notification_about_an_earlier_turn_does_not_cancel_the_current_one() -> None:
    # The same worker finished lease 1 (chat -> pending) and claimed the chat
    # again as lease 2 before its listener delivered lease 1's notification.
    from chatd.worker import Turn, Worker

    worker = Worker(worker_config("postgresql://unused@127.0.0.1/unused", login_role=False))
    chat = UUID(int=7)
    running = asyncio.create_task(asyncio.Event().wait())
    turn = Turn(chat, lease=2, task=running)
    worker.turns[chat] = turn

    def notify(status: str, lease: int) -> None:
        payload = json.dumps({"kind": "status", "chat_id": str(chat), "status": status, "lease": lease})
        worker._on_notification(f"chatd_chat_{chat}", payload)

    notify("pending", 1)
    notify("running", 2)
    assert turn.cancel_reason is None, "stale and current-running hints leave the turn alone"
    notify("waiting", 2)
    assert turn.cancel_reason == "lost", "its own lease leaving running cancels it"
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def test_a_reply_too_large_to_store_errors_the_chat_once_instead_of_retrying(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    owner, org = owner_and_org(factory)
    fake.script(Text("x" * 1_100_000, chunks=20))  # over the 1 MB content limit
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "error"), what="the chat to fail for good")
    row = await chat_row(db, chat)
    assert row["last_error"]["retryable"] is False
    assert "at most 1 MB" in row["last_error"]["message"]
    assert len(fake.requests) == 1, "not retried: the same reply would fail again"
    assert await messages(db, chat, "assistant") == []


async def test_a_failure_chatd_refuses_to_record_is_recorded_as_a_generic_error_instead(
    db: str, factory: Factory, fake: FakeLLM, conn: psycopg.Connection[Any]
) -> None:
    # record_failure refuses an invalid ChatError (CD007) and changes nothing;
    # the chat must not stay running under a live worker, which recovery never
    # takes back: the worker records a minimal valid error instead.
    owner, org = owner_and_org(factory)
    conn.execute("UPDATE chatd.settings SET backoff_cap = '1 hour', backoff_base = '1 hour'")  # no re-claim here
    chat = factory.chat(owner, org=org, model=model_for(factory, fake))
    claimed = conn.execute(
        "SELECT chat_id, lease, attempt, model, messages FROM chatd.acquire_chats('manual', 1)"
    ).fetchone()
    assert claimed is not None and claimed[0] == chat
    claim = Claim(*claimed)
    too_big = ChatError("x" * 70_000, ChatErrorKind.overloaded, "p", True)  # over the 64 KB ChatError limit
    async with running_worker(worker_config(db)) as worker:
        await TurnRun(worker, Turn(claim.chat_id, claim.lease), claim)._record_failure(claim, too_big)
    row = await chat_row(db, chat)
    assert row["status"] == "pending", "retried (the original error was retryable), not left running"
    assert row["last_error"]["kind"] == "generic"
    assert "refused the original error" in row["last_error"]["detail"]
