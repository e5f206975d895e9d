"""Anthropic extended thinking (issue 19 item 12): a model config's
`thinking_budget_tokens` is sent as `thinking: {type: enabled, budget_tokens}`
and the thinking streams as reasoning, through the real anthropic SDK against
the fake LLM, and in worker turns on a real PostgreSQL. With tools, each
thinking block is stored with its signature and sent back, as the Messages
API requires when a turn continues after a tool call (the fake enforces
that rule and checks signatures the way the API does)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
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
)

from chatd.llm import (
    Finished,
    ModelSpec,
    PromptMessage,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    TextDelta,
    ToolSpec,
    stream_turn,
    to_anthropic_messages,
)
from chatd.llm.anthropic_messages import AnthropicTranslator
from chatd.llm.classify import ChatErrorKind, ChatTurnError
from chatd.testing import Factory
from chatd.testing.fakellm import FakeLLM, FakeUsage, Text
from chatd.testing.fakellm.anthropic_wire import thinking_signature

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
        {"type": "reasoning", "text": "six times seven", "signature": thinking_signature("six times seven")},
        {"type": "text", "text": "42"},
    ]



ASK = {"name": "ask_user", "description": "asks the user", "input_schema": {"type": "object"}}


def thinking_tool_chat(conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM) -> tuple[UUID, UUID]:
    """A chat on a thinking model that may call the client tool ask_user."""
    conn.execute(
        "SELECT chatd.admin_upsert_provider('claude', 'anthropic', %s, %s)",
        (fake.anthropic_base_url, KEY_ENV),
    )
    [model] = conn.execute(
        "SELECT chatd.admin_upsert_model('claude', 'claude-x', p_max_output_tokens => 8192, "
        "p_thinking_budget_tokens => 1024)"
    ).fetchone() or [None]
    org = factory.org()
    owner = factory.user(org=org)
    row = conn.execute(
        "SELECT chatd.create_chat(%s, %s, %s, %s, p_tools => %s)",
        (owner, org, Jsonb("what colour?"), model, Jsonb([ASK])),
    ).fetchone()
    assert row is not None
    return owner, UUID(str(row[0]))


async def test_a_thinking_turn_that_calls_a_tool_sends_its_signed_thinking_back_and_finishes(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    owner, chat = thinking_tool_chat(conn, factory, fake)
    fake.script(
        Text("", reasoning="I should ask", tool_calls=({"id": "k1", "name": "ask_user", "input": {}},)),
        Text("blue it is", reasoning="they said blue"),
    )
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "requires_action", "error"), what="the tool step")
        conn.execute("SELECT chatd.submit_tool_results(%s, %s, %s)",
                     (owner, chat, Jsonb([{"tool_call_id": "k1", "output": "blue"}])))
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    assert (await chat_row(db, chat))["status"] == "waiting"
    step, final = await messages(db, chat, "assistant")
    assert step["content"][0] == {
        "type": "reasoning", "text": "I should ask", "signature": thinking_signature("I should ask"),
    }
    assert text_of(final["content"]) == "blue it is"
    sent = fake.requests[-1].body["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["content"][0] == {
        "type": "thinking", "thinking": "I should ask", "signature": thinking_signature("I should ask"),
    }


async def test_a_thinking_block_sent_back_with_a_forged_signature_is_refused_as_a_config_error(
    fake: FakeLLM,
) -> None:
    """What the Messages API does with a signature that is not its own."""
    history = [
        PromptMessage("user", "hello"),
        PromptMessage("assistant", [
            {"type": "reasoning", "text": "edited afterwards", "signature": thinking_signature("original")},
            {"type": "tool-call", "tool_call_id": "k1", "tool_name": "ask_user", "input": {}},
        ]),
        PromptMessage("tool", [{"type": "tool-result", "tool_call_id": "k1", "output": "blue"}]),
    ]
    tools = [ToolSpec("ask_user", "asks the user", {"type": "object"})]
    with pytest.raises(ChatTurnError) as info:
        [e async for e in stream_turn(spec(fake, 2048), history, startup_timeout=10, tools=tools)]
    assert (info.value.error.kind, info.value.error.status_code) == (ChatErrorKind.config, 400)
    assert "signature" in (info.value.error.detail or "")


def test_sealed_reasoning_goes_back_as_thinking_blocks_only_when_thinking_is_on() -> None:
    step = PromptMessage("assistant", [
        {"type": "reasoning", "text": "hmm", "signature": "sig-1"},
        {"type": "reasoning", "text": "", "redacted": "opaque"},
        {"type": "reasoning", "text": "not sealed"},
        {"type": "tool-call", "tool_call_id": "k1", "tool_name": "ask_user", "input": {}},
    ])
    _, on = to_anthropic_messages([step], native_tools=True, thinking=True)
    assert on[0]["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "tool_use", "id": "k1", "name": "ask_user", "input": {}},
    ]
    _, off = to_anthropic_messages([step], native_tools=True, thinking=False)
    assert [b["type"] for b in off[0]["content"]] == ["tool_use"]


def test_the_translator_reads_signatures_and_redacted_thinking() -> None:
    translator = AnthropicTranslator()
    redacted = SimpleNamespace(type="content_block_start", index=0,
                               content_block=SimpleNamespace(type="redacted_thinking", data="opaque"))
    signed = SimpleNamespace(type="content_block_delta", index=1,
                             delta=SimpleNamespace(type="signature_delta", signature="sig-1"))
    assert translator.feed(redacted) == [RedactedReasoning("opaque")]  # type: ignore[arg-type]
    assert translator.feed(signed) == [ReasoningSignature("sig-1")]  # type: ignore[arg-type]
