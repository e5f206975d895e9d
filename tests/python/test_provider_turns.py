"""Worker turns against what real provider endpoints do (issue 19): usage
after the finish chunk, stalls, auth headers, empty and filtered replies,
malformed chunks. Real PostgreSQL, the real SDKs, the fake LLM scripting
each server behaviour."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from worker_support import chat_row, running_worker, status_is, wait_until, worker_config

from chatd.config import config_from_args
from chatd.testing import Factory
from chatd.testing.fakellm import (
    DOCUMENTED_AUTH,
    FakeLLM,
    FakeUsage,
    HttpError,
    Malformed,
    Text,
    Truncate,
)

KEY_ENVS = {"openai": "CHATD_TEST_OPENAI_KEY", "anthropic": "CHATD_TEST_ANTHROPIC_KEY"}


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def provider_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in KEY_ENVS.values():
        monkeypatch.setenv(env, "sk-test")


def chat_for(factory: Factory, fake: FakeLLM, kind: str = "openai-compat",
             auth_header: str | None = None) -> tuple[UUID, UUID]:
    """(chat, provider) for a priced model of a new provider of `kind`."""
    base_url = fake.anthropic_base_url if kind == "anthropic" else fake.openai_base_url
    provider = factory.provider(kind=kind, base_url=base_url, api_key_env=KEY_ENVS.get(kind))
    model = factory.model_config(provider=provider, input_price=3, output_price=15)
    org = factory.org()
    owner = factory.user(org=org)
    return factory.chat(owner, org=org, model=model, text="hello"), provider


async def assistant_rows(dsn: str, chat: UUID) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT content, input_tokens, output_tokens, total_cost_micros, finish_reason "
            "FROM chatd.messages WHERE chat_id = %s AND role = 'assistant' ORDER BY id",
            (chat,),
        )
        keys = ("content", "input_tokens", "output_tokens", "total_cost_micros", "finish_reason")
        return [dict(zip(keys, r, strict=True)) for r in await cur.fetchall()]


def set_settings(conn: psycopg.Connection[Any], **values: str) -> None:
    for name, value in values.items():
        conn.execute(f"UPDATE chatd.settings SET {name} = %s::interval", (value,))


# --------------------------------------------------------------------------- usage and finish


async def test_a_stream_cut_between_finish_and_usage_is_retried_not_saved_unpriced(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    set_settings(conn, backoff_base="50 milliseconds", backoff_cap="100 milliseconds")
    fake.script(Truncate("the first try", after_finish=True),
                Text("the whole answer", usage=FakeUsage(input_tokens=10, output_tokens=4)))
    chat, _ = chat_for(factory, fake)
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the retried turn")
    [assistant] = await assistant_rows(db, chat)
    assert (assistant["input_tokens"], assistant["output_tokens"]) == (10, 4)
    assert assistant["total_cost_micros"] == 10 * 3 + 4 * 15
    assert len(fake.requests) == 2


@pytest.mark.parametrize(("kind", "finish"), [("openai-compat", "length"), ("anthropic", "max_tokens")])
async def test_an_empty_reply_that_hit_the_length_limit_is_stored_with_usage_cost_and_reason(
    db: str, factory: Factory, fake: FakeLLM, kind: str, finish: str
) -> None:
    fake.script(Text("", finish_reason=finish, usage=FakeUsage(input_tokens=9, output_tokens=256)))
    chat, _ = chat_for(factory, fake, kind)
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    assert (await chat_row(db, chat))["status"] == "waiting"
    [assistant] = await assistant_rows(db, chat)
    assert assistant == {
        "content": [], "input_tokens": 9, "output_tokens": 256,
        "total_cost_micros": 9 * 3 + 256 * 15, "finish_reason": "length",
    }


async def test_every_finished_step_records_why_it_stopped(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    chat, _ = chat_for(factory, fake, "anthropic")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the turn to finish")
    [assistant] = await assistant_rows(db, chat)
    assert assistant["finish_reason"] == "stop"  # Anthropic's end_turn


@pytest.mark.parametrize(("kind", "finish"), [("openai", "content_filter"), ("anthropic", "refusal")])
async def test_a_content_filter_stop_keeps_the_billed_step_and_errors_the_chat_as_content_filter(
    db: str, factory: Factory, fake: FakeLLM, kind: str, finish: str
) -> None:
    fake.script(Text("I started to", finish_reason=finish, usage=FakeUsage(5, 3)))
    chat, _ = chat_for(factory, fake, kind)
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "error", "waiting"), what="the turn to end")
    row = await chat_row(db, chat)
    assert row["status"] == "error"
    assert (row["last_error"]["kind"], row["last_error"]["retryable"]) == ("content_filter", False)
    [assistant] = await assistant_rows(db, chat)
    assert (assistant["finish_reason"], assistant["total_cost_micros"]) == (
        "content_filter", 5 * 3 + 3 * 15
    )


# --------------------------------------------------------------------------- transport


async def test_a_stalled_stream_fails_the_turn_after_the_workers_idle_timeout(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    set_settings(conn, backoff_base="30 seconds", backoff_cap="60 seconds")
    fake.script(Truncate("a stalled reply", after_chunks=1, stall=60))
    chat, _ = chat_for(factory, fake)
    async with running_worker(worker_config(db, idle_timeout=0.5)):
        await wait_until(lambda: _failed(db, chat), what="the stall to fail the turn")
    row = await chat_row(db, chat)
    assert (row["last_error"]["kind"], row["last_error"]["retryable"]) == ("timeout", True)
    assert "no data for 0.5 s" in row["last_error"]["message"]
    assert row["retry_in"] > timedelta(seconds=25)


async def test_a_malformed_chunk_is_retried(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    set_settings(conn, backoff_base="50 milliseconds", backoff_cap="100 milliseconds")
    fake.script(Malformed("garbled", after_chunks=1), Text("fine now"))
    chat, _ = chat_for(factory, fake, "anthropic")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    assert (await chat_row(db, chat))["status"] == "waiting"
    [assistant] = await assistant_rows(db, chat)
    assert assistant["content"] == [{"type": "text", "text": "fine now"}]


async def _failed(dsn: str, chat: UUID) -> bool:
    return (await chat_row(dsn, chat))["last_error"] is not None


def test_the_idle_timeout_is_a_worker_setting_defaulting_to_60_seconds() -> None:
    args = argparse.Namespace(database_url="postgresql:///x")
    assert config_from_args(args, {}).idle_timeout == 60.0
    assert config_from_args(args, {"CHATD_IDLE_TIMEOUT": "7.5"}).idle_timeout == 7.5
    args.idle_timeout = 3.0
    assert config_from_args(args, {"CHATD_IDLE_TIMEOUT": "7.5"}).idle_timeout == 3.0
    with pytest.raises(ValueError, match="idle_timeout"):
        config_from_args(argparse.Namespace(database_url="x", idle_timeout=0.0), {})


# --------------------------------------------------------------------------- auth headers


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_provider_reaches_an_endpoint_that_checks_the_documented_auth_header(
    db: str, factory: Factory, fake: FakeLLM, kind: str
) -> None:
    fake.auth.update(DOCUMENTED_AUTH)
    chat, _ = chat_for(factory, fake, kind)
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    assert (await chat_row(db, chat))["status"] == "waiting"


async def test_an_anthropic_gateway_row_can_send_a_bearer_token_instead(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    fake.auth["anthropic"] = "bearer"
    chat, provider = chat_for(factory, fake, "anthropic")
    conn.execute("UPDATE chatd.providers SET auth_header = 'bearer' WHERE id = %s", (provider,))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    assert (await chat_row(db, chat))["status"] == "waiting"
    assert fake.requests[0].headers["authorization"] == "Bearer sk-test"


async def test_a_server_that_rejects_stream_options_gets_turns_billed_from_estimated_usage(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    fake.script(
        HttpError(400, "invalid_request_error", "Unrecognized request argument: stream_options"),
        Text("abcdefgh"),
    )
    chat, _ = chat_for(factory, fake)
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    assert (await chat_row(db, chat))["status"] == "waiting"
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT input_tokens, output_tokens, total_cost_micros, usage_estimated "
            "FROM chatd.messages WHERE chat_id = %s AND role = 'assistant'", (chat,))
        row = await cur.fetchone()
    # "hello" and "abcdefgh" at about 4 characters a token
    assert row == (2, 2, 2 * 3 + 2 * 15, True)


async def test_an_interrupted_turn_is_billed_from_an_estimate_of_what_it_streamed(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    words = " ".join(f"word{i}" for i in range(200))
    fake.script(Text(words, chunks=200, delay=0.02))
    chat, _ = chat_for(factory, fake)
    async with running_worker(worker_config(db, heartbeat_interval=30)) as worker:
        await wait_until(lambda: _has_parts(db, chat), what="the first streamed part")
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            cur = await conn.execute("SELECT owner_id FROM chatd.chats WHERE id = %s", (chat,))
            [owner] = await cur.fetchone() or [None]
            await conn.execute("SELECT chatd.interrupt_chat(%s, %s)", (owner, chat))
        await wait_until(lambda: _gone(worker, chat), timeout=10, what="the turn to be cancelled")
    async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT content, input_tokens, output_tokens, total_cost_micros, usage_estimated "
            "FROM chatd.messages WHERE chat_id = %s AND role = 'assistant'", (chat,))
        row = await cur.fetchone()
    assert row is not None
    content, input_tokens, output_tokens, cost, estimated = row
    saved = "".join(p["text"] for p in content if p["type"] == "text")
    assert saved and words.startswith(saved)
    assert (input_tokens, output_tokens) == (2, -(-len(saved) // 4))  # "hello"; 4 chars a token
    assert cost == input_tokens * 3 + output_tokens * 15 and estimated is True


async def _has_parts(dsn: str, chat: UUID) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT 1 FROM chatd.stream_parts WHERE chat_id = %s", (chat,))
        return await cur.fetchone() is not None


async def _gone(worker: Any, chat: UUID) -> bool:
    return chat not in worker.turns


async def test_a_scheduled_retry_runs_when_due_not_at_the_next_poll(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    set_settings(conn, backoff_base="50 milliseconds", backoff_cap="100 milliseconds")
    fake.script(HttpError(429, headers={"retry-after": "1"}), Text("retried"))
    chat, _ = chat_for(factory, fake)
    # a 30 s poll: only a wake at next_attempt_at can retry within seconds
    async with running_worker(worker_config(db, poll_interval=30)):
        await wait_until(lambda: _failed(db, chat), what="the 429 to be recorded")
        failed_at = time.monotonic()
        await wait_until(lambda: status_is(db, chat, "waiting"), timeout=10, what="the retry")
        waited = time.monotonic() - failed_at
    assert len(fake.requests) == 2
    assert 0.5 < waited < 2.0, f"retried after {waited:.2f} s for a 1 s retry-after"
