"""What a test scripts and what the fake records: the response types, the
`[[fake:...]]` directive grammar (see chatd.testing.fakellm), scripting a fake
in another process, and the recorded requests."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast


@dataclass(frozen=True)
class FakeUsage:
    """Token counts to report; None fields are derived from the prompt and reply word counts."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True)
class Text:
    """A complete reply: `text` in `chunks` pieces, `delay` seconds apart."""

    text: str
    chunks: int = 3
    delay: float = 0.0
    usage: FakeUsage | None = None
    reasoning: str = ""
    finish_reason: str | None = None  # default: 'stop' (OpenAI) / 'end_turn' (Anthropic)
    send_usage: bool = True  # False: no OpenAI usage chunk even when include_usage asked for one
    # tool calls after the text: ({"id", "name", "input"}, ...); the finish
    # reason then defaults to 'tool_calls' (OpenAI) / 'tool_use' (Anthropic)
    tool_calls: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class HttpError:
    """An HTTP error response in the provider's error format.

    `error_type` is the provider error type/code (Anthropic `error.type`,
    OpenAI `error.type` and `error.code`); a default follows from `status`.
    `body` replaces the whole JSON body when given.
    """

    status: int = 500
    error_type: str | None = None
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass(frozen=True)
class Truncate:
    """A stream cut after `after_chunks` of `chunks` text pieces, without the terminal event.

    The body ends cleanly unless `abort`, which drops the connection instead.
    `stall` seconds of silence (connection held open) come before the cut.
    `after_finish`: the whole text and the finish chunk are sent (OpenAI: the
    choice with `finish_reason`; Anthropic: `message_delta`), the cut comes
    before the usage chunk and `[DONE]` (OpenAI) or `message_stop` (Anthropic).
    """

    text: str = "partial reply"
    after_chunks: int = 1
    chunks: int = 4
    delay: float = 0.0
    abort: bool = False
    stall: float = 0.0
    after_finish: bool = False


@dataclass(frozen=True)
class Malformed:
    """A stream that starts fine, then sends a data line that is not JSON
    (`data: {"id": ...` cut short) after `after_chunks` text pieces, then ends."""

    text: str = "partial reply"
    after_chunks: int = 1
    chunks: int = 4


@dataclass(frozen=True)
class Hang:
    """Send nothing for `seconds`, then answer with `then` (default: the echo):
    a reply, or an HTTP error that arrives late."""

    seconds: float
    then: Text | HttpError | None = None


@dataclass(frozen=True)
class StreamError:
    """A stream that starts fine, then carries the provider's in-stream error event.

    On the Responses API: `response.failed` with `error.code = error_type`,
    or, with `event="error"`, a bare `error` event with that `code`."""

    error_type: str = "overloaded_error"
    message: str | None = None
    after_chunks: int = 1
    text: str = "partial reply"
    chunks: int = 4
    event: str = "response.failed"


FakeResponse = Text | HttpError | Truncate | Hang | StreamError | Malformed

_RESPONSE_TYPES: dict[str, type[Any]] = {
    "text": Text,
    "error": HttpError,
    "truncate": Truncate,
    "hang": Hang,
    "stream_error": StreamError,
    "malformed": Malformed,
}


def response_from_json(obj: Mapping[str, Any]) -> FakeResponse:
    """Build a response from its JSON form: `{"type": "text", "text": "hi", ...}`."""
    kwargs = dict(obj)
    cls = _RESPONSE_TYPES.get(str(kwargs.pop("type", "text")))
    if cls is None:
        raise ValueError(f"unknown response type {obj.get('type')!r}")
    known = {f.name for f in fields(cls)}
    unknown = set(kwargs) - known
    if unknown:
        raise ValueError(f"unknown fields for {cls.__name__}: {sorted(unknown)}")
    if isinstance(kwargs.get("usage"), Mapping):
        kwargs["usage"] = FakeUsage(**kwargs["usage"])
    if isinstance(kwargs.get("tool_calls"), list):
        kwargs["tool_calls"] = tuple(kwargs["tool_calls"])
    if isinstance(kwargs.get("then"), Mapping):
        then = response_from_json(kwargs["then"])
        if not isinstance(then, Text | HttpError):
            raise ValueError("hang.then must be a text or error response")
        kwargs["then"] = then
    return cast(FakeResponse, cls(**kwargs))


def response_to_json(response: FakeResponse) -> dict[str, Any]:
    """The JSON form of a response, as accepted by `POST /_fake/script`."""
    name = next(k for k, v in _RESPONSE_TYPES.items() if isinstance(response, v))
    obj = {k: v for k, v in asdict(response).items() if v is not None}
    if isinstance(response, HttpError):
        obj["headers"] = dict(response.headers)
    if isinstance(response, Text):
        obj["tool_calls"] = [dict(c) for c in response.tool_calls]
    return {"type": name, **obj}


def script_remote(
    url: str, *responses: FakeResponse, match: str | None = None, timeout: float = 10.0
) -> None:
    """Queue responses on a fake running in another process (`url` is its root URL)."""
    payload = {"match": match, "responses": [response_to_json(r) for r in responses]}
    request = urllib.request.Request(
        f"{url.rstrip('/')}/_fake/script",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        reply.read()


@dataclass
class RecordedRequest:
    """One request the fake received (for assertions)."""

    api: str  # 'openai' | 'responses' | 'anthropic'
    path: str
    model: str | None
    messages: list[Any]
    system: Any
    stream: bool
    headers: dict[str, str]
    body: dict[str, Any]
    completed: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set as the fake starts writing the end of a complete response (terminal event
    included), so it is set before the client can have read that end."""
    disconnected: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set when the client went away while the fake was still writing."""

    @property
    def last_user_text(self) -> str:
        """Text of the last user message."""
        return _last_user_text(self.messages)

    def to_json(self) -> dict[str, Any]:
        """JSON form served by `GET /_fake/requests`."""
        return {
            "api": self.api,
            "path": self.path,
            "model": self.model,
            "messages": self.messages,
            "system": self.system,
            "stream": self.stream,
            "completed": self.completed.is_set(),
            "disconnected": self.disconnected.is_set(),
        }


# --------------------------------------------------------------------------- the server


DIRECTIVE = re.compile(r"\[\[fake:([^\]]*)\]\]")


_TOKENS = frozenset(
    {
        "error",
        "retry-after",
        "retry-after-ms",
        "chunks",
        "delay",
        "reply",
        "reasoning",
        "truncate",
        "abort",
        "hang",
        "times",
        "stall",
        "finish",
        "no-usage",
        "malformed",
        "error-event",
    }
)


def parse_directive(spec: str, echo: str) -> tuple[FakeResponse, int | None]:
    """Parse the tokens of one directive into (response, times)."""
    status: int | None = None
    opts: dict[str, str] = {}
    for token in spec.split():
        if re.fullmatch(r"\d{3}", token):
            status = int(token)
            continue
        name, _, value = token.partition("=")
        if name not in _TOKENS:
            raise ValueError(f"unknown directive token {token!r}")
        opts[name] = value
    try:
        times = int(opts["times"]) if "times" in opts else None
        text = opts["reply"].replace("_", " ") if "reply" in opts else echo
        chunks = int(opts.get("chunks") or 3)
        delay = float(opts.get("delay") or 0)
        response: FakeResponse
        if status is not None:
            headers = {k: opts[k] for k in ("retry-after", "retry-after-ms") if opts.get(k)}
            response = HttpError(status, opts.get("error") or None, headers=headers)
        elif opts.get("error"):
            event = "error" if "error-event" in opts else "response.failed"
            response = StreamError(opts["error"], text=text, chunks=max(chunks, 2), event=event)
        elif "malformed" in opts:
            after = int(opts["malformed"] or 1)
            response = Malformed(text, after_chunks=after, chunks=max(chunks, after + 1))
        elif "truncate" in opts:
            finish = opts["truncate"] == "finish"
            after = len(text) if finish else int(opts["truncate"] or 1)
            response = Truncate(
                text,
                after_chunks=after,
                chunks=chunks if finish else max(chunks, after + 1),
                delay=delay,
                abort="abort" in opts,
                stall=float(opts.get("stall") or 0),
                after_finish=finish,
            )
        else:
            reasoning = opts.get("reasoning", "").replace("_", " ")
            response = Text(
                text,
                chunks=chunks,
                delay=delay,
                reasoning=reasoning,
                finish_reason=opts.get("finish") or None,
                send_usage="no-usage" not in opts,
            )
        if opts.get("hang"):
            if not isinstance(response, Text | HttpError):
                raise ValueError("hang combines only with a text reply or an HTTP status")
            response = Hang(float(opts["hang"]), then=response)
    except ValueError as exc:
        raise ValueError(f"bad directive {spec.strip()!r}: {exc}") from exc
    return response, times


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and "text" in p
        )
    return ""


def prompt_tokens(messages: Sequence[Any], system: Any) -> int:
    """A provider's count of a prompt, as this fake makes it: one token per 4
    characters of the messages and system prompt as the request sent them
    (its wire's JSON, not chatd's storage format)."""
    sent = json.dumps([system, *messages], ensure_ascii=False)
    return -(-len(sent) // 4)


def context_error(api: str, used: int, window: int) -> HttpError:
    """The 400 each real API returns for a prompt over the model's window
    (OpenAI Chat Completions: code context_length_exceeded, param messages;
    OpenAI Responses: the same code, param input, "Your input exceeds the
    context window of this model...";
    Anthropic: invalid_request_error "prompt is too long: N tokens > M
    maximum", and the request_id the real API adds beside the error)."""
    if api == "anthropic":
        return HttpError(400, body={"type": "error", "error": {
            "type": "invalid_request_error", "message": f"prompt is too long: {used} tokens > {window} maximum",
        }, "request_id": "req_fakellm_context"})
    if api == "responses":
        return HttpError(400, body={"error": {
            "message": "Your input exceeds the context window of this model. Please adjust your input and try again.",
            "type": "invalid_request_error", "param": "input", "code": "context_length_exceeded",
        }})
    return HttpError(400, body={"error": {
        "message": f"This model's maximum context length is {window} tokens. However, your messages "
                   f"resulted in {used} tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded",
    }})


def count_words(messages: Sequence[Any], system: Any) -> int:
    total = len(_content_text(system).split())
    for message in messages:
        if isinstance(message, Mapping):
            total += len(_content_text(message.get("content")).split())
    return total


def split_text(text: str, n: int) -> list[str]:
    """`text` in min(n, len(text)) nearly equal, non-empty pieces."""
    if not text:
        return []
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    pieces, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces
