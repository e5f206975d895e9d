"""The fake LLM server itself (chatd.testing.fakellm), checked with the official SDKs and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from chatd.testing.fakellm import (
    FakeLLM,
    FakeUsage,
    Hang,
    HttpError,
    StreamError,
    Text,
    Truncate,
    response_from_json,
    response_to_json,
    script_remote,
)


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def post(url: str, body: Any) -> tuple[int, dict[str, str], Any]:
    """Raw POST; returns (status, lower-cased headers, parsed JSON or text)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status, headers, raw = reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, dict(err.headers), err.read()
    headers = {k.lower(): v for k, v in headers.items()}
    try:
        return status, headers, json.loads(raw)
    except ValueError:
        return status, headers, raw.decode()


def chat_body(text: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}]}


def openai_client(fake: FakeLLM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="k", base_url=fake.openai_base_url, max_retries=0)


def anthropic_client(fake: FakeLLM) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="k", base_url=fake.anthropic_base_url, max_retries=0)


# --------------------------------------------------------------------------- SDK fidelity


async def test_openai_sdk_stream_helper_accumulates_the_reply(fake: FakeLLM) -> None:
    fake.script(Text("hello world", chunks=4, usage=FakeUsage(input_tokens=5, output_tokens=2)))
    client = openai_client(fake)
    async with client.chat.completions.stream(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream_options={"include_usage": True},
    ) as stream:
        final = await stream.get_final_completion()
    await client.close()
    assert final.choices[0].message.content == "hello world"
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens == 2


async def test_anthropic_sdk_stream_helper_accumulates_text_and_thinking(fake: FakeLLM) -> None:
    fake.script(
        Text(
            "hello world",
            chunks=4,
            reasoning="hmm ok",
            usage=FakeUsage(input_tokens=5, output_tokens=7, reasoning_tokens=2),
        )
    )
    client = anthropic_client(fake)
    async with client.messages.stream(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = await stream.get_final_message()
    await client.close()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[1].type == "text" and final.content[1].text == "hello world"
    assert final.content[0].type == "thinking" and final.content[0].thinking == "hmm ok"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 7)


async def test_non_streaming_requests_get_whole_replies(fake: FakeLLM) -> None:
    oai, ant = openai_client(fake), anthropic_client(fake)
    completion = await oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "ping"}]
    )
    message = await ant.messages.create(
        model="m", max_tokens=10, messages=[{"role": "user", "content": "pong"}]
    )
    await oai.close()
    await ant.close()
    assert completion.choices[0].message.content == "echo: ping"
    assert message.content[0].type == "text" and message.content[0].text == "echo: pong"


async def test_openai_error_status_reaches_the_sdk_with_headers(fake: FakeLLM) -> None:
    fake.script(HttpError(429, headers={"retry-after": "3"}))
    client = openai_client(fake)
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    await client.close()
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.code == "rate_limit_exceeded"


async def test_anthropic_error_body_has_the_error_type(fake: FakeLLM) -> None:
    fake.script(HttpError(529))
    client = anthropic_client(fake)
    with pytest.raises(anthropic.APIStatusError) as info:
        await client.messages.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    await client.close()
    assert info.value.status_code == 529 and info.value.type == "overloaded_error"


# --------------------------------------------------------------------------- scripting


def test_scripted_responses_are_consumed_fifo_then_the_default_echo(fake: FakeLLM) -> None:
    fake.script(Text("one"), Text("two"))
    replies = [
        post(f"{fake.openai_base_url}/chat/completions", chat_body("q"))[2] for _ in range(3)
    ]
    assert [r["choices"][0]["message"]["content"] for r in replies] == ["one", "two", "echo: q"]
    assert fake.pending == 0


def test_match_scripts_each_conversation_independently(fake: FakeLLM) -> None:
    fake.script(Text("for A"), match="chat-A")
    fake.script(Text("for B"), match="chat-B")
    fake.script(Text("for anyone"))
    url = f"{fake.anthropic_base_url}/v1/messages"
    b = post(url, chat_body("hi from chat-B"))[2]
    other = post(url, chat_body("hi from chat-C"))[2]
    a = post(url, chat_body("hi from chat-A"))[2]
    assert [r["content"][0]["text"] for r in (a, b, other)] == ["for A", "for B", "for anyone"]


def test_requests_are_recorded_for_assertions(fake: FakeLLM) -> None:
    post(
        f"{fake.anthropic_base_url}/v1/messages",
        {**chat_body("hello"), "system": "sys", "model": "claude-x"},
    )
    (request,) = fake.requests
    assert (request.api, request.path, request.model, request.system) == (
        "anthropic",
        "/v1/messages",
        "claude-x",
        "sys",
    )
    assert request.messages == [{"role": "user", "content": "hello"}]
    assert request.last_user_text == "hello" and request.completed.is_set()


def test_control_endpoints_script_and_list_requests_from_another_process(
    fake: FakeLLM,
) -> None:
    script_remote(
        fake.url, Text("remote"), HttpError(503, headers={"retry-after": "1"}), match="zz"
    )
    status, _, reply = post(f"{fake.openai_base_url}/chat/completions", chat_body("zz 1"))
    assert (status, reply["choices"][0]["message"]["content"]) == (200, "remote")
    status, headers, _ = post(f"{fake.openai_base_url}/chat/completions", chat_body("zz 2"))
    assert (status, headers["retry-after"]) == (503, "1")
    with urllib.request.urlopen(f"{fake.url}/_fake/requests", timeout=10) as resp:
        listed = json.loads(resp.read())
    assert [r["messages"][0]["content"] for r in listed] == ["zz 1", "zz 2"]
    assert post(f"{fake.url}/_fake/reset", {})[0] == 200
    assert fake.requests == []


def test_control_endpoint_rejects_bad_scripts(fake: FakeLLM) -> None:
    status, _, body = post(f"{fake.url}/_fake/script", {"responses": [{"type": "nope"}]})
    assert status == 400 and "unknown response type" in body["error"]["message"]
    status, _, _ = post(f"{fake.url}/_fake/script", {"responses": [{"type": "text", "x": 1}]})
    assert status == 400


@pytest.mark.parametrize(
    "response",
    [
        Text("t", chunks=2, delay=0.1, usage=FakeUsage(1, 2, 0, 3, 4), reasoning="r"),
        HttpError(429, "rate_limit_error", "slow", {"retry-after": "2"}),
        Truncate("abc", after_chunks=1, chunks=3, abort=True),
        Hang(1.5, then=Text("late")),
        StreamError("api_error", after_chunks=2),
    ],
)
def test_responses_round_trip_through_json(response: Any) -> None:
    assert response_from_json(json.loads(json.dumps(response_to_json(response)))) == response


# --------------------------------------------------------------------------- directives


def test_directive_error_with_retry_after(fake: FakeLLM) -> None:
    status, headers, body = post(
        f"{fake.anthropic_base_url}/v1/messages", chat_body("go [[fake:429 retry-after=1.5]]")
    )
    assert (status, headers["retry-after"]) == (429, "1.5")
    assert body["error"]["type"] == "rate_limit_error"


def test_directive_error_type_and_retry_after_ms(fake: FakeLLM) -> None:
    status, headers, body = post(
        f"{fake.openai_base_url}/chat/completions",
        chat_body("[[fake:400 error=context_length_exceeded retry-after-ms=20]]"),
    )
    assert (status, headers["retry-after-ms"]) == (400, "20")
    assert body["error"]["code"] == "context_length_exceeded"


def test_directive_times_limits_how_often_it_applies(fake: FakeLLM) -> None:
    url = f"{fake.openai_base_url}/chat/completions"
    statuses = [post(url, chat_body("x [[fake:503 times=2]]"))[0] for _ in range(3)]
    assert statuses == [503, 503, 200]


def test_directive_reply_and_chunks_shape_the_stream(fake: FakeLLM) -> None:
    _, _, raw = post(
        f"{fake.openai_base_url}/chat/completions",
        chat_body("[[fake:reply=hi_there chunks=4]]", stream=True),
    )
    frames = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    pieces = [f["choices"][0]["delta"].get("content") for f in frames if f["choices"]]
    assert [p for p in pieces if p] == ["hi", " t", "he", "re"]
    assert raw.rstrip().endswith("data: [DONE]")


def test_directive_truncate_ends_without_terminal_event(fake: FakeLLM) -> None:
    _, _, raw = post(
        f"{fake.anthropic_base_url}/v1/messages", chat_body("abc [[fake:truncate=2]]", stream=True)
    )
    assert "content_block_delta" in raw
    assert "message_stop" not in raw and "message_delta" not in raw


def test_directive_without_directive_text_in_the_echo(fake: FakeLLM) -> None:
    _, _, reply = post(
        f"{fake.openai_base_url}/chat/completions", chat_body("tell me [[fake:chunks=2]]")
    )
    assert reply["choices"][0]["message"]["content"] == "echo: tell me"


def test_bad_directive_is_a_400_naming_the_token(fake: FakeLLM) -> None:
    status, _, body = post(
        f"{fake.openai_base_url}/chat/completions", chat_body("[[fake:explode]]")
    )
    assert status == 400 and "explode" in body["error"]["message"]


# --------------------------------------------------------------------------- load and CLI


async def test_serves_150_concurrent_streams_scripted_per_chat(fake: FakeLLM) -> None:
    n = 150
    for i in range(n):
        fake.script(Text(f"reply for chat {i}", chunks=5, delay=0.01), match=f"chat-{i}:")
    client = openai.AsyncOpenAI(api_key="k", base_url=fake.openai_base_url, max_retries=0)

    async def one(i: int) -> str:
        stream = await client.chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": f"chat-{i}: go"}]
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    try:
        replies = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()
    assert replies == [f"reply for chat {i}" for i in range(n)]
    assert all(r.completed.is_set() for r in fake.requests)


def test_cli_prints_the_url_first_and_stops_on_sigterm() -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "chatd", "fakellm", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            status, _, reply = post(f"{url}/v1/chat/completions", chat_body("cli"))
            assert (status, reply["choices"][0]["message"]["content"]) == (200, "echo: cli")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
