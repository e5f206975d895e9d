"""Context windows (issue 14 item 2, docs/context.md): the prompt is the
system prompt, the newest summary and the newest messages that fit the
model's window, chosen in SQL at claim time; past a threshold the worker has
the model summarize the older part (billed like a step); a provider's
context-length error leads to one compaction and one retry. The fake LLM
counts tokens its own way (the request as sent) and answers over its window
with each wire's real 400."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import anthropic
import openai
import psycopg
import pytest
from psycopg.types.json import Jsonb
from test_fakellm import anthropic_client, openai_client, post
from test_spend_ledger import LEDGER_MISMATCH
from worker_support import (
    chat_row,
    messages,
    running_worker,
    status_is,
    text_of,
    wait_until,
    worker_config,
)

from chatd.llm.classify import classify
from chatd.protocol.errors import ChatErrorKind
from chatd.testing import Factory
from chatd.testing.fakellm import FakeLLM, HttpError, Text
from chatd.testing.fakellm.script import context_error, prompt_tokens

#: one chat message: about 100 tokens by chatd's estimate
WORDS = " ".join(f"word{i}" for i in range(60))


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def long_chat(
    conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM | None, *, turns: int,
    context_limit: int, max_output: int = 1024,
) -> UUID:
    """A pending chat with a system prompt and `turns` user/assistant pairs
    before its last user message, on a model of the given window."""
    org = factory.org()
    owner = factory.user(org=org)
    provider = (factory.provider(kind="openai-compat", base_url=fake.openai_base_url, api_key_env=None)
                if fake else None)
    model = factory.model_config(provider=provider, max_output_tokens=max_output)
    conn.execute("UPDATE chatd.model_configs SET context_limit = %s WHERE id = %s", (context_limit, model))
    row = conn.execute(
        "SELECT chatd.create_chat(%s, %s, %s, %s, p_system_prompt => 'You are terse.')",
        (owner, org, Jsonb(f"msg 0 {WORDS}"), model),
    ).fetchone()
    assert row is not None
    chat = UUID(str(row[0]))
    conn.execute(
        "INSERT INTO chatd.messages (chat_id, role, content) "
        "SELECT %s, CASE WHEN i %% 2 = 1 THEN 'assistant' ELSE 'user' END::chatd.message_role, "
        "jsonb_build_array(jsonb_build_object('type', 'text', 'text', 'msg ' || i || ' ' || %s)) "
        "FROM generate_series(1, %s) AS i",
        (chat, WORDS, 2 * turns),
    )
    return chat


def claim(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute(
        "SELECT chat_id, lease, messages, history_complete, context FROM chatd.acquire_chats('hand', 1)"
    ).fetchone()
    assert row is not None
    return dict(zip(("chat", "lease", "messages", "complete", "context"), row, strict=True))


def tokens(conn: psycopg.Connection[Any], ids: list[int]) -> int:
    row = conn.execute(
        "SELECT sum(chatd._message_tokens(role, content, output_tokens, reasoning_tokens)) "
        "FROM chatd.messages WHERE id = ANY(%s)", (ids,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_the_window_is_the_system_prompt_and_the_newest_messages_that_fit(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    chat = long_chat(conn, factory, None, turns=40, context_limit=4000, max_output=500)
    got = claim(conn)
    ids = [m["id"] for m in got["messages"]]
    every = [r[0] for r in conn.execute(
        "SELECT id FROM chatd.messages WHERE chat_id = %s ORDER BY id", (chat,)
    ).fetchall()]
    assert got["messages"][0]["role"] == "system", "the system prompt always comes first"
    window = ids[1:]
    assert window == every[-len(window):], "the newest messages, in order, none skipped"
    assert 10 < len(window) < 40, "the window, not the history"
    budget = 4000 - 500 - 1024  # context_limit - max_output_tokens - settings.context_margin_tokens
    assert tokens(conn, ids) <= budget
    assert got["messages"][1]["role"] == "user", "it starts with a user message"
    assert got["complete"] is True and got["context"]["compact"] is True


def test_a_window_never_starts_with_a_tool_result_or_an_assistant_message(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    chat = long_chat(conn, factory, None, turns=0, context_limit=3000, max_output=500)
    # user, then many (assistant tool step, tool result) pairs, then the newest user message
    step = Jsonb([{"type": "tool-call", "tool_call_id": "c", "tool_name": "t", "input": {"q": WORDS},
                   "source": "mcp"}])
    result = Jsonb([{"type": "tool-result", "tool_call_id": "c", "tool_name": "t", "output": WORDS,
                     "is_error": False}])
    for _ in range(12):
        conn.execute("INSERT INTO chatd.messages (chat_id, role, content, finish_reason) "
                     "VALUES (%s, 'assistant', %s, 'tool_calls')", (chat, step))
        conn.execute("INSERT INTO chatd.messages (chat_id, role, content) VALUES (%s, 'tool', %s)", (chat, result))
    conn.execute("INSERT INTO chatd.messages (chat_id, role, content) VALUES (%s, 'user', %s)",
                 (chat, Jsonb([{"type": "text", "text": f"and now? {WORDS}"}])))
    for _ in range(3):
        conn.execute("INSERT INTO chatd.messages (chat_id, role, content, finish_reason) "
                     "VALUES (%s, 'assistant', %s, 'tool_calls')", (chat, step))
        conn.execute("INSERT INTO chatd.messages (chat_id, role, content) VALUES (%s, 'tool', %s)", (chat, result))
    window = claim(conn)["messages"][1:]
    assert window[0]["role"] == "user", [m["role"] for m in window]
    assert window[0]["content"][0]["text"].startswith("and now?")


async def test_a_2000_message_chat_keeps_answering_with_a_64k_token_model(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    chat = long_chat(conn, factory, fake, turns=1000, context_limit=64000)
    fake.context_window = 64000  # the provider's own limit, counted its own way
    fake.script(*[Text("summary: the user counted words; nothing else matters")] * 8, match="user: msg")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end", timeout=120)
    row = await chat_row(db, chat)
    assert row["status"] == "waiting", row["last_error"]
    answer = (await messages(db, chat, "assistant"))[-1]
    assert text_of(answer["content"]).startswith("echo: msg 2000"), "the newest question was answered"
    answered = fake.requests[-1]
    assert max(prompt_tokens(r.messages, r.system) for r in fake.requests) <= 64000, (
        "no request was over the provider's window: the window was chosen before the first one"
    )
    assert sum(prompt_tokens(r.messages, r.system) for r in fake.requests) > 64000, "yet the history is not"
    sent = [m["content"] for m in answered.messages]
    assert sent[0] == "You are terse." and sent[1].startswith("Summary of the earlier part")
    summaries = conn.execute(
        "SELECT id, summary_through_id, visibility::text, total_cost_micros FROM chatd.messages "
        "WHERE chat_id = %s AND summary_through_id IS NOT NULL ORDER BY id", (chat,)
    ).fetchall()
    assert summaries and all(v == "model" and cost is not None for _, _, v, cost in summaries), (
        "each summary is a model-only message, billed like a step"
    )
    assert conn.execute("SELECT count(*) FROM chatd.messages WHERE chat_id = %s AND deleted", (chat,)).fetchone() \
        == (0,), "older messages stay for the user"
    assert conn.execute(LEDGER_MISMATCH).fetchone() == (0,), "the ledger equals the sum over messages"
    # the next claim starts after the newest summary, with nothing to compact
    conn.execute("SELECT chatd.send_message(owner_id, id, %s) FROM chatd.chats WHERE id = %s",
                 (Jsonb("one more"), chat))
    again = claim(conn)
    assert again["context"]["compact"] is False
    assert again["context"]["summary_id"] == summaries[-1][0]
    assert again["messages"][1]["id"] == summaries[-1][0]
    assert all(m["id"] > summaries[-1][1] for m in again["messages"][2:])


async def test_a_context_length_error_leads_to_one_compaction_and_success(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    # chatd believes the model has 64k tokens; the provider says 4,000
    chat = long_chat(conn, factory, fake, turns=30, context_limit=64000)
    fake.context_window = 4000
    fake.script(*[Text("summary: thirty turns of counting words")] * 8, match="user: msg")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    row = await chat_row(db, chat)
    assert row["status"] == "waiting", row["last_error"]
    kinds = ["summary" if r.messages[0].get("content", "").startswith("You compress") else "step"
             for r in fake.requests]
    summaries = kinds.count("summary")
    assert kinds == ["step"] + ["summary"] * summaries + ["step"], (
        "the step, one compaction (in chunks that each fit the provider's window), the step again"
    )
    stored = conn.execute(
        "SELECT count(*) FROM chatd.messages WHERE chat_id = %s AND summary_through_id IS NOT NULL", (chat,)
    ).fetchone()
    assert stored == (summaries,) and summaries >= 1
    assert text_of((await messages(db, chat, "assistant"))[-1]["content"]).startswith("echo: msg 60")


async def test_a_second_context_length_error_fails_the_turn_with_that_kind(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    chat = long_chat(conn, factory, fake, turns=30, context_limit=64000)
    fake.script(context_error("openai", 9000, 4000), context_error("openai", 5000, 4000))
    fake.script(Text("summary: short"), match="user: msg")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    row = await chat_row(db, chat)
    assert row["status"] == "error"
    assert (row["last_error"]["kind"], row["last_error"]["retryable"]) == ("context_length", False)
    assert len(fake.requests) == 3, "no second compaction, no further retry"


async def test_a_failing_summary_call_is_retried_and_loses_no_message(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    chat = long_chat(conn, factory, fake, turns=30, context_limit=6000, max_output=500)
    conn.execute("UPDATE chatd.settings SET backoff_base = '10 milliseconds', backoff_cap = '20 milliseconds'")
    before = conn.execute("SELECT count(*) FROM chatd.messages WHERE chat_id = %s", (chat,)).fetchone()
    fake.script(HttpError(503), Text("summary: it went fine in the end"), match="user: msg")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    row = await chat_row(db, chat)
    assert row["status"] == "waiting", row["last_error"]
    after = conn.execute(
        "SELECT count(*) FILTER (WHERE NOT deleted AND summary_through_id IS NULL), "
        "count(*) FILTER (WHERE summary_through_id IS NOT NULL) FROM chatd.messages WHERE chat_id = %s", (chat,)
    ).fetchone()
    assert before is not None and after == (before[0] + 1, 1), "every message kept; one summary; one answer"


@pytest.mark.parametrize("system_prompt", [None, "You are terse."])
def test_a_short_chats_window_decided_in_the_claim_is_the_one_context_window_gives(
    conn: psycopg.Connection[Any], factory: Factory, system_prompt: str | None
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    model = factory.model_config()
    row = conn.execute(
        "SELECT chatd.create_chat(%s, %s, %s, %s, p_system_prompt => %s)",
        (owner, org, Jsonb("hello"), model, system_prompt),
    ).fetchone()
    assert row is not None
    got = claim(conn)
    assert got["chat"] == row[0]
    full = conn.execute("SELECT chatd._context_window(%s)", (row[0],)).fetchone()
    assert full is not None
    assert got["context"] == full[0], "the claim's shortcut for short chats and the full walk agree"
    assert [m["role"] for m in got["messages"]] == (["system"] if system_prompt else []) + ["user"]


def test_the_fake_llm_over_its_window_answers_each_wire_s_real_context_length_400(fake: FakeLLM) -> None:
    # The bodies the real APIs return (as reported by their users):
    # OpenAI Chat Completions {"error": {"message": "This model's maximum context length is 8192 tokens. However,
    #   your messages resulted in 8227 tokens. Please reduce the length of the messages.", "type":
    #   "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
    # OpenAI Responses {"error": {..."code": "context_length_exceeded", "message": "Your input exceeds the context
    #   window of this model. Please adjust your input and try again.", "param": "input"}}
    # Anthropic {"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long:
    #   208310 tokens > 200000 maximum"}, "request_id": "req_..."}
    fake.context_window = 50
    asked = [{"role": "user", "content": WORDS}]
    status, _, body = post(f"{fake.openai_base_url}/chat/completions", {"model": "m", "messages": asked})
    used = prompt_tokens(fake.requests[-1].messages, fake.requests[-1].system)
    assert used > 50 and status == 400
    assert body == {"error": {
        "message": f"This model's maximum context length is 50 tokens. However, your messages resulted in {used} "
                   "tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
    status, _, body = post(f"{fake.openai_base_url}/responses", {"model": "m", "input": WORDS})
    assert status == 400 and body == {"error": {
        "message": "Your input exceeds the context window of this model. Please adjust your input and try again.",
        "type": "invalid_request_error", "param": "input", "code": "context_length_exceeded"}}
    status, _, body = post(f"{fake.anthropic_base_url}/v1/messages", {"model": "m", "max_tokens": 10, "messages": asked})
    used = prompt_tokens(fake.requests[-1].messages, fake.requests[-1].system)
    assert status == 400 and str(body.pop("request_id")).startswith("req_")
    assert body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": f"prompt is too long: {used} tokens > 50 maximum"}}


async def test_each_sdk_s_context_length_error_is_classified_context_length(fake: FakeLLM) -> None:
    fake.context_window = 50
    asked: Any = [{"role": "user", "content": WORDS}]
    with pytest.raises(openai.BadRequestError) as chat_error:
        await openai_client(fake).chat.completions.create(model="m", messages=asked)
    with pytest.raises(openai.BadRequestError) as responses_error:
        await openai_client(fake).responses.create(model="m", input=WORDS)
    with pytest.raises(anthropic.BadRequestError) as messages_error:
        await anthropic_client(fake).messages.create(model="m", max_tokens=10, messages=asked)
    kinds = [(classify(e.value, p).kind, classify(e.value, p).retryable) for e, p in (
        (chat_error, "openai"), (responses_error, "openai"), (messages_error, "anthropic"))]
    assert kinds == [(ChatErrorKind.context_length, False)] * 3


async def test_compaction_past_the_threshold_is_a_summary_billed_like_a_step_and_the_next_window_starts_after_it(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    chat = long_chat(conn, factory, fake, turns=30, context_limit=6000, max_output=500)
    assert claim_context(conn, chat)["compact"] is True, "past settings.compact_threshold of the budget"
    fake.script(*[Text("summary: thirty turns of counting words")] * 4, match="user: msg")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    row = await chat_row(db, chat)
    assert row["status"] == "waiting", row["last_error"]
    summaries = conn.execute(
        "SELECT id, summary_through_id, role::text, visibility::text, total_cost_micros, input_tokens "
        "FROM chatd.messages WHERE chat_id = %s AND summary_through_id IS NOT NULL ORDER BY id", (chat,)
    ).fetchall()
    assert summaries, "a summary was stored"
    assert all(r[2:4] == ("system", "model") and r[4] is not None and r[5] for r in summaries), (
        "a model-only system message with its usage and cost"
    )
    assert conn.execute(LEDGER_MISMATCH).fetchone() == (0,), "the ledger equals the sum over messages"
    conn.execute("SELECT chatd.send_message(owner_id, id, %s) FROM chatd.chats WHERE id = %s",
                 (Jsonb("one more"), chat))
    again = claim(conn)
    assert again["context"]["compact"] is False and again["messages"][1]["id"] == summaries[-1][0]
    assert all(m["id"] > summaries[-1][1] for m in again["messages"][2:])


def claim_context(conn: psycopg.Connection[Any], chat: UUID) -> dict[str, Any]:
    """What a claim would say of the chat's window, without claiming it."""
    row = conn.execute("SELECT chatd._context_window(%s)", (chat,)).fetchone()
    assert row is not None
    return dict(row[0])
