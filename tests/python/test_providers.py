"""Provider adapters (chatd.llm) through the real SDKs against the fake LLM server."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Iterator, Sequence
from types import SimpleNamespace

import pytest

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
    anthropic_messages,
    openai_chat,
    stream_turn,
)
from chatd.llm.classify import ChatError, ChatErrorKind, ChatTurnError
from chatd.testing.fakellm import (
    DOCUMENTED_AUTH,
    FakeLLM,
    FakeUsage,
    Hang,
    HttpError,
    Malformed,
    StreamError,
    Text,
    Truncate,
)

KINDS = ["openai", "openai-compat", "anthropic"]
KEY_ENV = "CHATD_TEST_LLM_KEY"
HELLO = [PromptMessage("user", [{"type": "text", "text": "hello"}])]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    monkeypatch.setenv(KEY_ENV, "sk-test-123")
    with FakeLLM() as server:
        yield server


def spec_for(kind: str, fake: FakeLLM, key_env: str | None = KEY_ENV) -> ModelSpec:
    base = fake.anthropic_base_url if kind == "anthropic" else fake.openai_base_url
    return ModelSpec(kind, f"{kind}-prov", base, key_env, "fake-model", 256)


async def collect(
    spec: ModelSpec,
    messages: Sequence[PromptMessage] = HELLO,
    startup_timeout: float = 10.0,
    idle_timeout: float | None = None,
    api_key: str | None = None,
    clients: ClientCache | None = None,
) -> list[StreamEvent]:
    stream = stream_turn(
        spec,
        messages,
        startup_timeout=startup_timeout,
        idle_timeout=idle_timeout,
        api_key=api_key,
        clients=clients,
    )
    return [e async for e in stream]


async def failure(
    spec: ModelSpec, startup_timeout: float = 10.0, idle_timeout: float | None = None
) -> tuple[list[StreamEvent], ChatError]:
    """Run a turn that must fail; returns what it streamed first and the error."""
    events: list[StreamEvent] = []
    with pytest.raises(ChatTurnError) as info:
        stream = stream_turn(
            spec, HELLO, startup_timeout=startup_timeout, idle_timeout=idle_timeout
        )
        async for event in stream:
            events.append(event)
    assert not any(isinstance(e, Finished) for e in events)
    return events, info.value.error


def sent_key(headers: dict[str, str]) -> str:
    """The API key as the SDK sent it (x-api-key or a bearer token, by SDK version)."""
    return headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")


def texts(events: Sequence[StreamEvent]) -> list[str]:
    return [e.text for e in events if isinstance(e, TextDelta)]


# --------------------------------------------------------------------------- success


@pytest.mark.parametrize("kind", KINDS)
async def test_streams_text_in_order_in_n_chunks_then_finished_with_usage(
    kind: str, fake: FakeLLM
) -> None:
    fake.script(
        Text(
            "abcdefghij",
            chunks=5,
            usage=FakeUsage(
                input_tokens=11,
                output_tokens=7,
                reasoning_tokens=0,
                cache_read_tokens=3,
                cache_write_tokens=2,
            ),
        )
    )
    events = await collect(spec_for(kind, fake))
    assert texts(events) == ["ab", "cd", "ef", "gh", "ij"]
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    done = events[-1]
    assert isinstance(done, Finished)
    assert done.usage == Usage(
        input_tokens=11,
        output_tokens=7,
        reasoning_tokens=0,
        cache_read_tokens=3,
        cache_write_tokens=2,
    )
    assert done.response_id == ("msg_fake_1" if kind == "anthropic" else "chatcmpl-fake-1")
    assert done.finish_reason == ("end_turn" if kind == "anthropic" else "stop")


@pytest.mark.parametrize("kind", KINDS)
async def test_default_reply_echoes_the_last_user_message(kind: str, fake: FakeLLM) -> None:
    events = await collect(spec_for(kind, fake))
    assert "".join(texts(events)) == "echo: hello"
    assert isinstance(events[-1], Finished) and events[-1].usage.output_tokens


@pytest.mark.parametrize("kind", KINDS)
async def test_reasoning_streams_as_reasoning_deltas_before_text(kind: str, fake: FakeLLM) -> None:
    fake.script(
        Text(
            "answer",
            chunks=2,
            reasoning="let me think",
            usage=FakeUsage(input_tokens=1, output_tokens=9, reasoning_tokens=4),
        )
    )
    events = await collect(spec_for(kind, fake))
    reasoning = [e.text for e in events if isinstance(e, ReasoningDelta)]
    assert "".join(reasoning) == "let me think"
    assert isinstance(events[0], ReasoningDelta)
    assert "".join(texts(events)) == "answer"
    assert isinstance(events[-1], Finished) and events[-1].usage.reasoning_tokens == 4


@pytest.mark.parametrize("kind", KINDS)
async def test_api_key_comes_from_the_env_var(kind: str, fake: FakeLLM) -> None:
    await collect(spec_for(kind, fake))
    assert sent_key(fake.requests[0].headers) == "sk-test-123"


async def test_openai_compat_without_key_env_uses_a_dummy_key(fake: FakeLLM) -> None:
    events = await collect(spec_for("openai-compat", fake, key_env=None))
    assert isinstance(events[-1], Finished)
    assert fake.requests[0].headers["authorization"] == "Bearer chatd-no-key"


async def test_max_output_tokens_uses_each_apis_parameter(fake: FakeLLM) -> None:
    for kind in KINDS:
        await collect(spec_for(kind, fake))
    openai_body, compat_body, anthropic_body = (r.body for r in fake.requests)
    assert openai_body["max_completion_tokens"] == 256 and "max_tokens" not in openai_body
    assert compat_body["max_tokens"] == 256 and "max_completion_tokens" not in compat_body
    assert anthropic_body["max_tokens"] == 256
    assert openai_body["stream_options"] == {"include_usage": True}


PROMPT = [
    PromptMessage("system", [{"type": "text", "text": "be brief"}]),
    PromptMessage("user", [{"type": "text", "text": "what is 2+2?"}]),
    PromptMessage(
        "assistant",
        [
            {"type": "reasoning", "text": "secret thoughts"},
            {"type": "text", "text": "4"},
            {"type": "tool-call", "tool_call_id": "c1", "tool_name": "calc", "args": {"x": 1}},
        ],
    ),
    PromptMessage(
        "tool", [{"type": "tool-result", "tool_call_id": "c1", "tool_name": "calc", "result": 4}]
    ),
    PromptMessage("user", "thanks"),
]


async def test_prompt_maps_to_openai_messages_without_reasoning(fake: FakeLLM) -> None:
    await collect(spec_for("openai", fake), PROMPT)
    sent = fake.requests[0].messages
    assert sent[0] == {"role": "system", "content": "be brief"}
    assert sent[2]["role"] == "assistant"
    assert "secret" not in str(sent)
    assert '[tool call calc({"x": 1})]' in sent[2]["content"]
    assert sent[3] == {"role": "user", "content": "[tool result calc: 4]"}
    assert sent[-1] == {"role": "user", "content": "thanks"}


async def test_prompt_maps_to_anthropic_system_param_and_merged_turns(fake: FakeLLM) -> None:
    await collect(spec_for("anthropic", fake), PROMPT)
    request = fake.requests[0]
    assert request.system == "be brief"
    assert [m["role"] for m in request.messages] == ["user", "assistant", "user"]
    assert "secret" not in str(request.messages)
    assert request.messages[2]["content"] == [
        {"type": "text", "text": "[tool result calc: 4]"},
        {"type": "text", "text": "thanks"},
    ]


async def test_a_shared_client_cache_serves_many_turns(fake: FakeLLM) -> None:
    cache = ClientCache()
    try:
        for _ in range(3):
            for kind in KINDS:
                events = await collect(spec_for(kind, fake), clients=cache)
                assert isinstance(events[-1], Finished)
    finally:
        await cache.aclose()
    assert len(fake.requests) == 9


# --------------------------------------------------------------------------- HTTP errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("header", "value", "expected_ms"), [("retry-after", "2", 2000), ("retry-after-ms", "750", 750)]
)
async def test_429_is_retryable_rate_limit_with_retry_after(
    kind: str, fake: FakeLLM, header: str, value: str, expected_ms: int
) -> None:
    fake.script(HttpError(429, headers={header: value}))
    _, error = await failure(spec_for(kind, fake))
    assert (error.kind, error.retryable, error.status_code, error.retry_after_ms) == (
        ChatErrorKind.rate_limit,
        True,
        429,
        expected_ms,
    )
    assert error.provider == f"{kind}-prov"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("status", "error_type", "expected", "retryable"),
    [
        (529, None, ChatErrorKind.overloaded, True),
        (503, None, ChatErrorKind.overloaded, True),
        (500, None, ChatErrorKind.generic, True),
        (401, None, ChatErrorKind.auth, False),
        (400, "context_length_exceeded", ChatErrorKind.context_length, False),
        (404, None, ChatErrorKind.config, False),
        (429, "insufficient_quota", ChatErrorKind.usage_limit, False),
    ],
)
async def test_http_errors_are_classified(
    kind: str,
    fake: FakeLLM,
    status: int,
    error_type: str | None,
    expected: ChatErrorKind,
    retryable: bool,
) -> None:
    fake.script(HttpError(status, error_type))
    _, error = await failure(spec_for(kind, fake))
    assert (error.kind, error.retryable, error.status_code) == (expected, retryable, status)


@pytest.mark.parametrize("kind", KINDS)
async def test_sdk_retries_are_off(kind: str, fake: FakeLLM) -> None:
    fake.script(HttpError(503))
    await failure(spec_for(kind, fake))
    assert len(fake.requests) == 1


# --------------------------------------------------------------------------- broken streams


@pytest.mark.parametrize("kind", KINDS)
async def test_truncated_stream_is_retryable_timeout_and_never_finished(
    kind: str, fake: FakeLLM
) -> None:
    fake.script(Truncate("partial reply", after_chunks=2, chunks=4))
    events, error = await failure(spec_for(kind, fake))
    assert texts(events) == ["part", "ial"]
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)
    assert STREAM_CLOSED in error.message and "stream closed" in error.message


@pytest.mark.parametrize("kind", KINDS)
async def test_dropped_connection_mid_stream_is_retryable_timeout(kind: str, fake: FakeLLM) -> None:
    fake.script(Truncate("partial reply", after_chunks=1, abort=True))
    events, error = await failure(spec_for(kind, fake))
    assert texts(events) == ["part"]
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)


@pytest.mark.parametrize("kind", KINDS)
async def test_in_stream_error_event_is_classified(kind: str, fake: FakeLLM) -> None:
    fake.script(StreamError("overloaded_error", after_chunks=1))
    events, error = await failure(spec_for(kind, fake))
    assert texts(events) == ["part"]
    assert (error.kind, error.retryable, error.status_code) == (
        ChatErrorKind.overloaded,
        True,
        None,
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_hang_past_startup_timeout_is_retryable_startup_timeout(
    kind: str, fake: FakeLLM
) -> None:
    fake.script(Hang(30))
    started = time.monotonic()
    events, error = await failure(spec_for(kind, fake), startup_timeout=0.3)
    assert events == []
    assert (error.kind, error.retryable) == (ChatErrorKind.startup_timeout, True)
    assert time.monotonic() - started < 10  # nowhere near the 30 s hang


async def test_startup_timeout_does_not_limit_later_chunks(fake: FakeLLM) -> None:
    fake.script(Text("ab", chunks=2, delay=0.8))  # the gap is longer than the startup timeout
    events = await collect(spec_for("openai", fake), startup_timeout=0.5)
    assert texts(events) == ["a", "b"] and isinstance(events[-1], Finished)


async def test_idle_timeout_turns_a_stalled_stream_into_retryable_timeout(
    fake: FakeLLM,
) -> None:
    fake.script(Text("abc", chunks=3, delay=30))
    events, error = await failure(spec_for("anthropic", fake), idle_timeout=0.3)
    assert texts(events) == ["a"]
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)
    assert "stalled" in error.message


async def test_unreachable_server_is_retryable_timeout(fake: FakeLLM) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = ModelSpec("openai-compat", "local", f"http://127.0.0.1:{port}/v1", None, "m", 10)
    _, error = await failure(spec)
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [None, "", "   "])
async def test_missing_or_empty_key_env_var_is_missing_key(
    kind: str, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(KEY_ENV)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    _, error = await failure(spec_for(kind, fake))
    assert (error.kind, error.retryable) == (ChatErrorKind.missing_key, False)
    assert KEY_ENV in error.message
    assert fake.requests == []


async def test_explicit_api_key_overrides_the_env(
    fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    events = await collect(spec_for("anthropic", fake), api_key="sk-explicit")
    assert isinstance(events[-1], Finished)
    assert sent_key(fake.requests[0].headers) == "sk-explicit"


async def test_unknown_provider_kind_is_config_error(fake: FakeLLM) -> None:
    spec = ModelSpec("gemini", "g", None, KEY_ENV, "m", 10)
    _, error = await failure(spec)
    assert (error.kind, error.retryable) == (ChatErrorKind.config, False)


# --------------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("kind", KINDS)
async def test_closing_the_iterator_mid_stream_closes_the_http_stream(
    kind: str, fake: FakeLLM
) -> None:
    fake.script(Text("x" * 400, chunks=400, delay=0.01))
    stream = stream_turn(spec_for(kind, fake), HELLO, startup_timeout=10)
    first = await anext(stream)
    assert first == TextDelta("x")
    await stream.aclose()  # type: ignore[attr-defined]
    request = fake.requests[0]
    assert await asyncio.to_thread(request.disconnected.wait, 10)
    assert not request.completed.is_set()


@pytest.mark.parametrize("kind", KINDS)
async def test_cancelling_the_consumer_task_closes_the_http_stream(
    kind: str, fake: FakeLLM
) -> None:
    fake.script(Text("y" * 400, chunks=400, delay=0.01))
    got_first = asyncio.Event()
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async for event in stream_turn(spec_for(kind, fake), HELLO, startup_timeout=10):
            seen.append(event)
            got_first.set()

    task = asyncio.create_task(consume())
    await got_first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    request = fake.requests[0]
    assert await asyncio.to_thread(request.disconnected.wait, 10)
    assert not request.completed.is_set()
    assert not any(isinstance(e, Finished) for e in seen)


# --------------------------------------------------------------------------- real-endpoint behaviour (issue 19)


@pytest.mark.parametrize("kind", KINDS)
async def test_stream_cut_after_the_finish_chunk_before_usage_is_retryable_stream_closed(
    kind: str, fake: FakeLLM
) -> None:
    # OpenAI sends usage (include_usage) in a chunk after the finish_reason one
    fake.script(Truncate("partial reply", after_finish=True))
    events, error = await failure(spec_for(kind, fake))
    assert "".join(texts(events)) == "partial reply"
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)
    assert STREAM_CLOSED in error.message


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stall_between_chunks_is_retryable_timeout_naming_the_seconds(
    kind: str, fake: FakeLLM
) -> None:
    fake.script(Truncate("partial reply", after_chunks=1, stall=30))
    started = time.monotonic()
    events, error = await failure(spec_for(kind, fake), idle_timeout=0.3)
    assert texts(events) == ["part"]
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)
    assert "no data for 0.3 s" in error.message
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("kind", KINDS)
async def test_sdk_clients_get_explicit_connect_and_read_timeouts(kind: str, fake: FakeLLM) -> None:
    cache = ClientCache(connect_timeout=3.0, read_timeout=0.3)
    try:
        fake.script(Truncate("partial reply", after_chunks=1, stall=30))
        spec = spec_for(kind, fake)
        client = cache.anthropic(spec, "k") if kind == "anthropic" else cache.openai(spec, "k")
        assert (client.timeout.connect, client.timeout.read) == (3.0, 0.3)  # type: ignore[union-attr]
        assert ClientCache().openai(spec, "k").timeout.read != 600  # type: ignore[union-attr]
        # no chatd idle timeout: the SDK's own read timeout still ends the stall
        with pytest.raises(ChatTurnError) as info:
            async for _ in stream_turn(spec, HELLO, startup_timeout=10, clients=cache):
                pass
        assert (info.value.error.kind, info.value.error.retryable) == (ChatErrorKind.timeout, True)
    finally:
        await cache.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_each_wire_sends_the_auth_header_its_api_documents(kind: str, fake: FakeLLM) -> None:
    fake.auth.update(DOCUMENTED_AUTH)
    events = await collect(spec_for(kind, fake))
    assert isinstance(events[-1], Finished)
    headers = fake.requests[0].headers
    if kind == "anthropic":
        assert headers["x-api-key"] == "sk-test-123" and "authorization" not in headers
        assert headers["anthropic-version"]
    else:
        assert headers["authorization"] == "Bearer sk-test-123" and "x-api-key" not in headers


@pytest.mark.parametrize(("kind", "scheme"), [("anthropic", "bearer"), ("openai-compat", "x-api-key")])
async def test_a_provider_row_can_choose_the_other_auth_header(
    kind: str, scheme: str, fake: FakeLLM
) -> None:
    fake.auth[("anthropic" if kind == "anthropic" else "openai")] = scheme
    spec = dataclasses.replace(spec_for(kind, fake), auth_header=scheme)
    events = await collect(spec)
    assert isinstance(events[-1], Finished)
    assert sent_key(fake.requests[0].headers) == "sk-test-123"


@pytest.mark.parametrize("kind", KINDS)
async def test_the_fake_refuses_the_wrong_auth_header_with_an_auth_error(
    kind: str, fake: FakeLLM
) -> None:
    other = {"anthropic": "bearer", "openai": "x-api-key"}
    fake.auth.update(other)
    _, error = await failure(spec_for(kind, fake))
    assert (error.kind, error.status_code) == (ChatErrorKind.auth, 401)


@pytest.mark.parametrize(
    ("kind", "finish"), [("openai", "length"), ("openai-compat", "length"), ("anthropic", "max_tokens")]
)
async def test_an_empty_reply_that_hit_the_length_limit_finishes_with_its_usage(
    kind: str, finish: str, fake: FakeLLM
) -> None:
    fake.script(Text("", finish_reason=finish, usage=FakeUsage(input_tokens=9, output_tokens=256)))
    events = await collect(spec_for(kind, fake))
    assert texts(events) == []
    done = events[-1]
    assert isinstance(done, Finished)
    assert (done.usage.input_tokens, done.usage.output_tokens) == (9, 256)
    assert done.stop == "length"


@pytest.mark.parametrize(
    ("raw", "stop"),
    [
        ("stop", "stop"), ("end_turn", "stop"), ("stop_sequence", "stop"), ("length", "length"),
        ("max_tokens", "length"), ("content_filter", "content_filter"),
        ("refusal", "content_filter"), ("tool_calls", "tool_calls"), ("tool_use", "tool_calls"),
        ("function_call", "tool_calls"), ("eos", "other"), (None, None),
    ],
)
def test_finish_reasons_map_to_one_vocabulary(raw: str | None, stop: str | None) -> None:
    assert Finished(Usage(), None, raw).stop == stop


@pytest.mark.parametrize("kind", KINDS)
async def test_a_malformed_chunk_is_a_retryable_transport_fault(kind: str, fake: FakeLLM) -> None:
    fake.script(Malformed("partial reply", after_chunks=1))
    events, error = await failure(spec_for(kind, fake))
    assert texts(events) == ["part"]
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)
    assert "malformed" in error.message


def test_translators_tolerate_sdk_objects_without_newer_attributes() -> None:
    """Older SDKs' usage types lack cache_write_tokens, output_tokens_details..."""
    openai_t = openai_chat.OpenAITranslator(usage_expected=True)
    chunk = SimpleNamespace(
        id="c1",
        usage=SimpleNamespace(prompt_tokens=5, completion_tokens=2),
        choices=[
            SimpleNamespace(
                index=0, delta=SimpleNamespace(content="hi"), finish_reason="stop"
            )
        ],
    )
    assert openai_t.feed(chunk) == [TextDelta("hi")]  # type: ignore[arg-type]
    done = openai_t.finished()
    assert done is not None and done.usage == Usage(input_tokens=5, output_tokens=2)
    anthropic_t = anthropic_messages.AnthropicTranslator()
    start = SimpleNamespace(
        type="message_start",
        message=SimpleNamespace(id="m1", usage=SimpleNamespace(input_tokens=4, output_tokens=1)),
    )
    delta = SimpleNamespace(
        type="message_delta",
        delta=SimpleNamespace(stop_reason="end_turn"),
        usage=SimpleNamespace(output_tokens=3),
    )
    for event in (start, delta, SimpleNamespace(type="message_stop")):
        anthropic_t.feed(event)  # type: ignore[arg-type]
    done = anthropic_t.finished()
    assert done is not None and done.usage == Usage(input_tokens=4, output_tokens=3)


STREAM_OPTIONS_400 = HttpError(
    400, "invalid_request_error", "Unrecognized request argument supplied: stream_options"
)


@pytest.mark.parametrize("kind", ["openai", "openai-compat"])
async def test_a_400_naming_stream_options_falls_back_once_without_them_and_estimates_usage(
    kind: str, fake: FakeLLM
) -> None:
    fake.script(STREAM_OPTIONS_400, Text("abcdefgh", chunks=2), Text("again"))
    cache = ClientCache()
    try:
        events = await collect(spec_for(kind, fake), clients=cache)
        assert texts(events) == ["abcd", "efgh"]
        done = events[-1]
        assert isinstance(done, Finished)
        # "hello" (5 chars) and "abcdefgh" (8 chars) at 4 characters a token, rounded up
        assert done.usage == Usage(input_tokens=2, output_tokens=2, estimated=True)
        assert [("stream_options" in r.body) for r in fake.requests] == [True, False]
        await collect(spec_for(kind, fake), clients=cache)  # remembered: no second 400
        assert "stream_options" not in fake.requests[2].body
    finally:
        await cache.aclose()


async def test_a_400_about_something_else_is_still_a_config_error(fake: FakeLLM) -> None:
    fake.script(HttpError(400, "invalid_request_error", "max_tokens is too large"))
    _, error = await failure(spec_for("openai-compat", fake))
    assert (error.kind, error.retryable) == (ChatErrorKind.config, False)
    assert len(fake.requests) == 1


async def test_a_provider_without_stream_usage_sends_no_stream_options_and_estimates(
    fake: FakeLLM,
) -> None:
    fake.script(Text("abcd", send_usage=False))
    spec = dataclasses.replace(spec_for("openai-compat", fake), stream_usage=False)
    events = await collect(spec)
    assert "stream_options" not in fake.requests[0].body
    done = events[-1]
    assert isinstance(done, Finished) and done.usage.estimated
    assert done.usage.output_tokens == 1


async def test_a_server_that_ignores_include_usage_is_stream_closed_when_usage_is_required(
    fake: FakeLLM,
) -> None:
    fake.script(Text("abcd", send_usage=False))
    _, error = await failure(spec_for("openai-compat", fake))
    assert (error.kind, error.retryable) == (ChatErrorKind.timeout, True)
