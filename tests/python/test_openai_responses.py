"""The OpenAI Responses API wire (issue 19 item 11): a provider row with
`api = 'responses'`, through the real openai SDK against the fake LLM's
`/v1/responses`, and worker turns over it on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import psycopg
import pytest
from worker_support import chat_row, running_worker, status_is, wait_until, worker_config

from chatd.llm import (
    STREAM_CLOSED,
    ClientCache,
    Finished,
    ModelSpec,
    PromptMessage,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    Usage,
    openai_responses,
    stream_turn,
)
from chatd.llm.classify import ChatError, ChatErrorKind, ChatTurnError
from chatd.testing import Factory
from chatd.testing.fakellm import (
    DOCUMENTED_AUTH,
    FakeLLM,
    FakeUsage,
    HttpError,
    Malformed,
    StreamError,
    Text,
    Truncate,
)

KEY_ENV = "CHATD_TEST_LLM_KEY"
HELLO = [PromptMessage("user", [{"type": "text", "text": "hello"}])]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    with FakeLLM() as server:
        yield server


def responses_spec(fake: FakeLLM, kind: str = "openai") -> ModelSpec:
    return ModelSpec(
        kind, f"{kind}-responses", fake.openai_base_url, KEY_ENV, "fake-model", 256,
        api="responses",
    )


async def collect(
    spec: ModelSpec,
    messages: Sequence[PromptMessage] = HELLO,
    idle_timeout: float | None = None,
    clients: ClientCache | None = None,
) -> list[StreamEvent]:
    stream = stream_turn(
        spec, messages, startup_timeout=10, idle_timeout=idle_timeout, clients=clients
    )
    return [e async for e in stream]


async def failure(spec: ModelSpec, idle_timeout: float | None = None) -> tuple[list[StreamEvent], ChatError]:
    events: list[StreamEvent] = []
    with pytest.raises(ChatTurnError) as info:
        async for event in stream_turn(spec, HELLO, startup_timeout=10, idle_timeout=idle_timeout):
            events.append(event)
    assert not any(isinstance(e, Finished) for e in events)
    return events, info.value.error


def texts(events: Sequence[StreamEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("kind", ["openai", "openai-compat"])
async def test_text_streams_in_order_then_finished_with_usage_from_response_completed(
    kind: str, fake: FakeLLM
) -> None:
    usage = FakeUsage(input_tokens=11, output_tokens=7, cache_read_tokens=3, cache_write_tokens=2)
    fake.script(Text("abcdefghij", chunks=5, usage=usage))
    events = await collect(responses_spec(fake, kind))
    assert texts(events) == ["ab", "cd", "ef", "gh", "ij"]
    done = events[-1]
    assert isinstance(done, Finished)
    # input_tokens (14) include the cached ones: chatd bills them once, as cache reads
    assert done.usage == Usage(
        input_tokens=11, output_tokens=7, reasoning_tokens=0, cache_read_tokens=3,
        cache_write_tokens=2,
    )
    assert (done.response_id, done.stop) == ("resp_fake_1", "stop")
    assert fake.requests[0].path == "/v1/responses"


async def test_reasoning_summaries_stream_as_reasoning_deltas_before_the_text(
    fake: FakeLLM,
) -> None:
    fake.script(Text("answer", chunks=2, reasoning="let me think", usage=FakeUsage(1, 9, 4)))
    events = await collect(responses_spec(fake))
    assert isinstance(events[0], ReasoningDelta)
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "let me think"
    assert "".join(texts(events)) == "answer"
    assert isinstance(events[-1], Finished) and events[-1].usage.reasoning_tokens == 4


def test_reasoning_text_and_later_summary_parts_are_reasoning_too() -> None:
    """Open-weight models on compatible servers stream `reasoning_text`;
    a summary in several parts gets a blank line between them."""
    translator = openai_responses.ResponsesTranslator("p")
    feed = [
        SimpleNamespace(type="response.reasoning_text.delta", delta="raw"),
        SimpleNamespace(type="response.reasoning_summary_part.added", summary_index=0),
        SimpleNamespace(type="response.reasoning_summary_text.delta", delta="one"),
        SimpleNamespace(type="response.reasoning_summary_part.added", summary_index=1),
        SimpleNamespace(type="response.reasoning_summary_text.delta", delta="two"),
        SimpleNamespace(type="response.some_future_event", delta="ignored"),
    ]
    events = [e for event in feed for e in translator.feed(event)]
    assert events == [ReasoningDelta(t) for t in ("raw", "one", "\n\n", "two")]
    assert translator.finished() is None  # no terminal event yet


def test_the_translator_tolerates_sdk_objects_without_newer_attributes() -> None:
    translator = openai_responses.ResponsesTranslator("p")
    completed = SimpleNamespace(
        type="response.completed",
        response=SimpleNamespace(id="r1", usage=SimpleNamespace(input_tokens=5, output_tokens=2)),
    )
    assert translator.feed(completed) == []
    done = translator.finished()
    assert done is not None and done.usage == Usage(input_tokens=5, output_tokens=2)


async def test_the_request_carries_the_conversation_the_output_limit_and_store_false(
    fake: FakeLLM,
) -> None:
    prompt = [
        PromptMessage("system", [{"type": "text", "text": "be brief"}]),
        PromptMessage("user", [
            {"type": "text", "text": "what is this?"},
            {"type": "file", "media_type": "image/png", "url": "https://x/cat.png"},
        ]),
        PromptMessage("assistant", [
            {"type": "reasoning", "text": "secret thoughts"}, {"type": "text", "text": "a cat"},
        ]),
        PromptMessage("user", "thanks"),
    ]
    await collect(responses_spec(fake), prompt)
    body = fake.requests[0].body
    assert body["input"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": "https://x/cat.png"},
        ]},
        {"role": "assistant", "content": "a cat"},
        {"role": "user", "content": "thanks"},
    ]
    assert (body["stream"], body["store"], body["max_output_tokens"]) == (True, False, 256)
    assert body["reasoning"] == {"summary": "auto"}
    assert "messages" not in body and "max_tokens" not in body


async def test_a_400_naming_reasoning_falls_back_once_without_summaries_and_remembers(
    fake: FakeLLM,
) -> None:
    fake.script(
        HttpError(400, "unsupported_parameter",
                  "Unsupported parameter: 'reasoning.summary' is not supported with this model."),
        Text("hi"), Text("again"),
    )
    cache = ClientCache()
    try:
        events = await collect(responses_spec(fake), clients=cache)
        assert texts(events) == ["h", "i"] and isinstance(events[-1], Finished)
        await collect(responses_spec(fake), clients=cache)
    finally:
        await cache.aclose()
    assert [("reasoning" in r.body) for r in fake.requests] == [True, False, False]


async def test_a_400_about_something_else_is_a_config_error_without_a_second_request(
    fake: FakeLLM,
) -> None:
    fake.script(HttpError(400, "invalid_request_error", message="Unsupported parameter: 'top_k'"))
    _, error = await failure(responses_spec(fake))
    assert (error.kind, error.retryable, error.status_code) == (ChatErrorKind.config, False, 400)
    assert len(fake.requests) == 1


async def test_a_server_that_reports_no_usage_gets_estimated_usage(fake: FakeLLM) -> None:
    fake.script(Text("abcdefgh", send_usage=False))
    done = (await collect(responses_spec(fake)))[-1]
    assert isinstance(done, Finished)
    assert done.usage == Usage(input_tokens=2, output_tokens=2, estimated=True)


# --------------------------------------------------------------------------- terminal events


async def test_response_incomplete_at_max_output_tokens_is_a_finished_length_step_with_usage(
    fake: FakeLLM,
) -> None:
    fake.script(Text("", finish_reason="length", usage=FakeUsage(input_tokens=9, output_tokens=256)))
    events = await collect(responses_spec(fake))
    assert texts(events) == []
    done = events[-1]
    assert isinstance(done, Finished)
    assert (done.usage.input_tokens, done.usage.output_tokens) == (9, 256)
    assert (done.finish_reason, done.stop) == ("max_output_tokens", "length")


async def test_response_incomplete_by_the_content_filter_stops_as_content_filter(
    fake: FakeLLM,
) -> None:
    fake.script(Text("I started to", finish_reason="content_filter"))
    done = (await collect(responses_spec(fake)))[-1]
    assert isinstance(done, Finished) and done.stop == "content_filter"


@pytest.mark.parametrize(
    ("code", "kind", "retryable"),
    [
        ("server_error", ChatErrorKind.generic, True),
        ("rate_limit_exceeded", ChatErrorKind.rate_limit, True),
        ("insufficient_quota", ChatErrorKind.usage_limit, False),
        ("context_length_exceeded", ChatErrorKind.context_length, False),
        ("invalid_prompt", ChatErrorKind.generic, False),
    ],
)
@pytest.mark.parametrize("event", ["response.failed", "error"])
async def test_response_failed_and_error_events_are_classified(
    fake: FakeLLM, code: str, kind: ChatErrorKind, retryable: bool, event: str
) -> None:
    fake.script(StreamError(code, after_chunks=1, event=event))
    events, error = await failure(responses_spec(fake))
    assert texts(events) == ["part"]
    assert (error.kind, error.retryable, error.status_code) == (kind, retryable, None)
    assert code in error.message and error.provider == "openai-responses"


async def test_the_fake_directive_scripts_an_error_event(fake: FakeLLM) -> None:
    prompt = [PromptMessage("user", "hi [[fake: error=rate_limit_exceeded error-event]]")]
    with pytest.raises(ChatTurnError) as info:
        await collect(responses_spec(fake), prompt)
    assert info.value.error.kind == ChatErrorKind.rate_limit


@pytest.mark.parametrize(
    "cut", [Truncate("partial reply", after_chunks=2), Truncate("partial reply", after_finish=True),
            Truncate("partial reply", after_chunks=1, abort=True)],
    ids=["mid-text", "after-output-done", "dropped"],
)
async def test_a_stream_without_response_completed_is_retryable_stream_closed(
    fake: FakeLLM, cut: Truncate
) -> None:
    fake.script(cut)
    events, error = await failure(responses_spec(fake))
    assert texts(events)
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)
    if not cut.abort:
        assert STREAM_CLOSED in error.message


async def test_a_malformed_event_is_a_retryable_transport_fault(fake: FakeLLM) -> None:
    fake.script(Malformed("partial reply", after_chunks=1))
    events, error = await failure(responses_spec(fake))
    assert texts(events) == ["part"]
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)
    assert "malformed" in error.message


async def test_a_stall_between_events_is_the_idle_timeout(fake: FakeLLM) -> None:
    fake.script(Truncate("partial reply", after_chunks=1, stall=30))
    started = time.monotonic()
    _, error = await failure(responses_spec(fake), idle_timeout=0.3)
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)
    assert "no data for 0.3 s" in error.message
    assert time.monotonic() - started < 10


async def test_a_429_is_a_retryable_rate_limit_with_retry_after(fake: FakeLLM) -> None:
    fake.script(HttpError(429, headers={"retry-after": "2"}))
    _, error = await failure(responses_spec(fake))
    assert (error.kind, error.retryable, error.retry_after_ms) == (ChatErrorKind.rate_limit, True, 2000)
    assert len(fake.requests) == 1  # SDK retries off


async def test_closing_the_iterator_mid_stream_closes_the_http_stream(fake: FakeLLM) -> None:
    fake.script(Text("x" * 400, chunks=400, delay=0.01))
    stream = stream_turn(responses_spec(fake), HELLO, startup_timeout=10)
    assert await anext(stream) == TextDelta("x")
    await stream.aclose()  # type: ignore[attr-defined]
    assert await asyncio.to_thread(fake.requests[0].disconnected.wait, 10)


# --------------------------------------------------------------------------- configuration


async def test_it_sends_the_documented_bearer_header_or_the_rows_choice(fake: FakeLLM) -> None:
    fake.auth.update(DOCUMENTED_AUTH)
    assert isinstance((await collect(responses_spec(fake)))[-1], Finished)
    headers = fake.requests[0].headers
    assert headers["authorization"] == "Bearer sk-test-123" and "x-api-key" not in headers
    fake.auth["openai"] = "x-api-key"
    spec = dataclasses.replace(responses_spec(fake, "openai-compat"), auth_header="x-api-key")
    assert isinstance((await collect(spec))[-1], Finished)
    assert fake.requests[1].headers["x-api-key"] == "sk-test-123"


async def test_an_anthropic_provider_cannot_speak_the_responses_api(fake: FakeLLM) -> None:
    spec = dataclasses.replace(responses_spec(fake), provider_kind="anthropic")
    _, error = await failure(spec)
    assert (error.kind, error.retryable) == (ChatErrorKind.config, False)
    assert "responses" in error.message and fake.requests == []


# --------------------------------------------------------------------------- worker turns


def responses_chat(conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM) -> UUID:
    """A chat on a priced model of a provider row with api = 'responses'."""
    provider = factory.provider(kind="openai", base_url=fake.openai_base_url, api_key_env=KEY_ENV)
    conn.execute("UPDATE chatd.providers SET api = 'responses' WHERE id = %s", (provider,))
    model = factory.model_config(provider=provider, input_price=3, output_price=15)
    org = factory.org()
    return factory.chat(factory.user(org=org), org=org, model=model, text="hello")


async def assistant_row(dsn: str, chat: UUID) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT content, input_tokens, output_tokens, total_cost_micros, finish_reason "
            "FROM chatd.messages WHERE chat_id = %s AND role = 'assistant'", (chat,))
        [row] = await cur.fetchall()
        return tuple(row)


async def test_a_turn_on_a_responses_provider_stores_reasoning_text_usage_and_cost(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    fake.script(Text("the answer", reasoning="the summary", usage=FakeUsage(10, 4)))
    chat = responses_chat(conn, factory, fake)
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    assert (await chat_row(db, chat))["status"] == "waiting"
    assert await assistant_row(db, chat) == (
        [{"type": "reasoning", "text": "the summary"}, {"type": "text", "text": "the answer"}],
        10, 4, 10 * 3 + 4 * 15, "stop",
    )
    assert fake.requests[0].path == "/v1/responses"


async def test_a_responses_turn_cut_at_max_output_tokens_is_stored_like_the_length_case(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    fake.script(Text("", finish_reason="length", usage=FakeUsage(input_tokens=9, output_tokens=256)))
    chat = responses_chat(conn, factory, fake)
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting", "error"), what="the turn to end")
    assert (await chat_row(db, chat))["status"] == "waiting"
    assert await assistant_row(db, chat) == ([], 9, 256, 9 * 3 + 256 * 15, "length")


async def test_a_failed_response_with_a_retryable_code_is_retried(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    conn.execute("UPDATE chatd.settings SET backoff_base = '50 milliseconds', "
                 "backoff_cap = '100 milliseconds'")
    fake.script(StreamError("server_error"), Text("second try"))
    chat = responses_chat(conn, factory, fake)
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the retried turn")
    assert (await assistant_row(db, chat))[0] == [{"type": "text", "text": "second try"}]
    assert len(fake.requests) == 2
