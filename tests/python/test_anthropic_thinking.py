"""Anthropic extended thinking (issue 19 item 12): a model config's
`thinking_budget_tokens` is sent as `thinking: {type: enabled, budget_tokens}`
and the thinking streams as reasoning, through the real anthropic SDK against
the fake LLM, and in worker turns on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from worker_support import chat_row, running_worker, status_is, wait_until, worker_config

from chatd.llm import Finished, ModelSpec, PromptMessage, ReasoningDelta, TextDelta, stream_turn
from chatd.llm.classify import ChatErrorKind, ChatTurnError
from chatd.testing import Factory
from chatd.testing.fakellm import FakeLLM, FakeUsage, Text

KEY_ENV = "CHATD_TEST_ANTHROPIC_KEY"
HELLO = [PromptMessage("user", "hello")]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    with FakeLLM() as server:
        yield server


def spec(fake: FakeLLM, budget: int | None) -> ModelSpec:
    return ModelSpec("anthropic", "claude", fake.anthropic_base_url, KEY_ENV, "claude-x", 4096,
                     thinking_budget_tokens=budget)


async def test_a_thinking_budget_is_sent_as_enabled_thinking_and_streams_as_reasoning(
    fake: FakeLLM,
) -> None:
    fake.script(Text("42", reasoning="six times seven", usage=FakeUsage(5, 30, 20)))
    events = [e async for e in stream_turn(spec(fake, 2048), HELLO, startup_timeout=10)]
    body = fake.requests[0].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 4096
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "six times seven"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "42"
    assert isinstance(events[-1], Finished) and events[-1].usage.reasoning_tokens == 20


async def test_without_a_budget_no_thinking_parameter_is_sent(fake: FakeLLM) -> None:
    [e async for e in stream_turn(spec(fake, None), HELLO, startup_timeout=10)]
    assert "thinking" not in fake.requests[0].body


async def test_a_budget_not_below_max_tokens_is_refused_by_the_api_as_a_config_error(
    fake: FakeLLM,
) -> None:
    """What the Messages API (and the fake) answer; chatd refuses such a
    model config with CD007 before any turn (pgTAP state_provider_api)."""
    with pytest.raises(ChatTurnError) as info:
        [e async for e in stream_turn(spec(fake, 4096), HELLO, startup_timeout=10)]
    assert (info.value.error.kind, info.value.error.status_code) == (ChatErrorKind.config, 400)
    assert "budget_tokens" in (info.value.error.detail or "")


async def test_a_model_configured_with_a_thinking_budget_stores_its_thinking_as_a_reasoning_part(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    conn.execute(
        "SELECT chatd.admin_upsert_provider('claude', 'anthropic', %s, %s)",
        (fake.anthropic_base_url, KEY_ENV),
    )
    [model] = conn.execute(
        "SELECT chatd.admin_upsert_model('claude', 'claude-x', p_max_output_tokens => 8192, "
        "p_thinking_budget_tokens => 1024)"
    ).fetchone() or [None]
    fake.script(Text("42", reasoning="six times seven"))
    org = factory.org()
    chat = factory.chat(factory.user(org=org), org=org, model=model, text="6 x 7?")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    assert (await chat_row(db, chat))["status"] == "waiting"
    body = fake.requests[0].body
    assert (body["thinking"], body["max_tokens"]) == (
        {"type": "enabled", "budget_tokens": 1024}, 8192
    )
    [content] = conn.execute(
        "SELECT content FROM chatd.messages WHERE chat_id = %s AND role = 'assistant'", (chat,)
    ).fetchone() or [None]
    assert content == [
        {"type": "reasoning", "text": "six times seven"}, {"type": "text", "text": "42"},
    ]

