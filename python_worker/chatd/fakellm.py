"""A scriptable fake LLM server for tests, demos and benchmarks.

A real HTTP server (stdlib `ThreadingHTTPServer`, one thread per connection)
that speaks just enough of two provider APIs for the official SDKs to parse:

- OpenAI Chat Completions, `POST /v1/chat/completions`, streaming (SSE chunks,
  a final usage chunk when `stream_options.include_usage`, `data: [DONE]`) and
  non-streaming;
- Anthropic Messages, `POST /v1/messages`, streaming (`message_start`,
  `content_block_*`, `message_delta` with usage, `message_stop`) and
  non-streaming.

What each request gets, first match wins:

1. a queued response scripted with `match=` whose substring occurs in the
   request's last user message;
2. a queued response scripted without `match`;
3. a `[[fake:...]]` directive in the last user message (grammar below);
4. the default: `"echo: <last user text>"` in 3 chunks, with token counts.

Directive grammar (space-separated tokens inside `[[fake: ...]]`):

    NNN                 answer with HTTP status NNN (e.g. 429, 503, 529, 401, 400)
    error=CODE          provider error type/code, e.g. overloaded_error,
                        context_length_exceeded, insufficient_quota; without NNN
                        the stream fails mid-way with an error event
    retry-after=S       `retry-after` header (seconds, may be fractional)
    retry-after-ms=MS   `retry-after-ms` header
    chunks=N            split the reply into N chunks
    delay=S             seconds between chunks
    reply=WORDS         reply text instead of the echo (underscores become spaces)
    reasoning=WORDS     stream reasoning text first (underscores become spaces)
    truncate[=K]        end the stream after K text chunks (default 1) without
                        the terminal event
    abort               with truncate: drop the connection instead
    hang=S              wait S seconds before sending anything (the reply or NNN)
    times=N             only the first N requests carrying this exact user
                        message obey the directive; later ones get the echo

For another process: `POST /_fake/script` with
`{"match": "...", "responses": [{"type": "text", "text": "hi"}, ...]}`
(types: text, error, truncate, hang, stream_error; fields as the classes below),
`POST /_fake/reset`, `GET /_fake/requests`.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any, cast

__all__ = [
    "FakeLLM",
    "FakeResponse",
    "FakeUsage",
    "Hang",
    "HttpError",
    "RecordedRequest",
    "StreamError",
    "Text",
    "Truncate",
    "add_arguments",
    "main",
    "run",
    "response_from_json",
    "response_to_json",
    "run_forever",
    "script_remote",
]


# --------------------------------------------------------------------------- scripting API


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
    """

    text: str = "partial reply"
    after_chunks: int = 1
    chunks: int = 4
    delay: float = 0.0
    abort: bool = False


@dataclass(frozen=True)
class Hang:
    """Send nothing for `seconds`, then answer with `then` (default: the echo):
    a reply, or an HTTP error that arrives late."""

    seconds: float
    then: Text | HttpError | None = None


@dataclass(frozen=True)
class StreamError:
    """A stream that starts fine, then carries the provider's in-stream error event."""

    error_type: str = "overloaded_error"
    message: str | None = None
    after_chunks: int = 1
    text: str = "partial reply"
    chunks: int = 4


FakeResponse = Text | HttpError | Truncate | Hang | StreamError

_RESPONSE_TYPES: dict[str, type[Any]] = {
    "text": Text,
    "error": HttpError,
    "truncate": Truncate,
    "hang": Hang,
    "stream_error": StreamError,
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

    api: str  # 'openai' | 'anthropic'
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


class FakeLLM:
    """The fake server; `with FakeLLM() as fake:` starts it on 127.0.0.1, a free port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._queue: list[tuple[str | None, FakeResponse]] = []
        self._requests: list[RecordedRequest] = []
        self._directive_uses: dict[str, int] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------

    def start(self) -> FakeLLM:
        """Bind and serve in a daemon thread."""
        server = _Server((self._host, self._port), _Handler)
        server.fake = self
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},  # so close() returns promptly
            name=f"fakellm:{self._port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, wake hanging handlers and drop open connections."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # addresses -----------------------------------------------------------

    @property
    def url(self) -> str:
        """Root URL, e.g. http://127.0.0.1:41234 (the Anthropic base_url)."""
        return f"http://{self._host}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        """base_url for the OpenAI SDK: `<root>/v1`."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """base_url for the Anthropic SDK: the root."""
        return self.url

    # scripting -----------------------------------------------------------

    def script(self, *responses: FakeResponse, match: str | None = None) -> None:
        """Queue responses, consumed FIFO by requests (only matching ones when `match`)."""
        with self._lock:
            self._queue.extend((match, r) for r in responses)

    def reset(self) -> None:
        """Forget queued responses, recorded requests and directive counters."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._directive_uses.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """How many scripted responses are still queued."""
        with self._lock:
            return len(self._queue)

    # internals -------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> tuple[int, FakeResponse]:
        """Store the request; pick its response (see the module docstring for the order)."""
        text = request.last_user_text
        with self._lock:
            self._requests.append(request)
            seq = len(self._requests)
            for wanted in (True, False):
                for i, (match, response) in enumerate(self._queue):
                    if (match is not None) == wanted and (match is None or match in text):
                        del self._queue[i]
                        return seq, response
            return seq, self._from_directives(text)

    def _from_directives(self, text: str) -> FakeResponse:
        """Response for the prompt's `[[fake:...]]` directive; the echo without one. Locked."""
        found = _DIRECTIVE.search(text)
        echo = "echo: " + _DIRECTIVE.sub("", text).strip()
        if found is None:
            return Text(echo)
        try:
            response, times = _parse_directive(found.group(1), echo)
        except ValueError as exc:
            return HttpError(400, "invalid_request_error", f"fakellm: {exc}")
        if times is not None:
            used = self._directive_uses.get(text, 0)
            self._directive_uses[text] = used + 1
            if used >= times:
                return Text(echo)
        return response


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many concurrent streams connect at once
    fake: FakeLLM

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # clients hanging up is normal

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    def drop_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_DIRECTIVE = re.compile(r"\[\[fake:([^\]]*)\]\]")


def _parse_directive(spec: str, echo: str) -> tuple[FakeResponse, int | None]:
    """Parse the tokens of one directive into (response, times)."""
    status: int | None = None
    opts: dict[str, str] = {}
    for token in spec.split():
        if re.fullmatch(r"\d{3}", token):
            status = int(token)
            continue
        name, _, value = token.partition("=")
        if name not in {
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
        }:
            raise ValueError(f"unknown directive token {token!r}")
        opts[name] = value
    try:
        times = int(opts["times"]) if "times" in opts else None
        text = opts["reply"].replace("_", " ") if opts.get("reply") else echo
        chunks = int(opts.get("chunks") or 3)
        delay = float(opts.get("delay") or 0)
        response: FakeResponse
        if status is not None:
            headers = {k: opts[k] for k in ("retry-after", "retry-after-ms") if opts.get(k)}
            response = HttpError(status, opts.get("error") or None, headers=headers)
        elif opts.get("error"):
            response = StreamError(opts["error"], text=text, chunks=max(chunks, 2))
        elif "truncate" in opts:
            after = int(opts["truncate"] or 1)
            response = Truncate(
                text,
                after_chunks=after,
                chunks=max(chunks, after + 1),
                delay=delay,
                abort="abort" in opts,
            )
        else:
            reasoning = opts.get("reasoning", "").replace("_", " ")
            response = Text(text, chunks=chunks, delay=delay, reasoning=reasoning)
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


def _words(messages: Sequence[Any], system: Any) -> int:
    total = len(_content_text(system).split())
    for message in messages:
        if isinstance(message, Mapping):
            total += len(_content_text(message.get("content")).split())
    return total


def _split(text: str, n: int) -> list[str]:
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


# --------------------------------------------------------------------------- wire formats

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}
_MESSAGES = {
    "context_length_exceeded": "This model's maximum context length is 8192 tokens; "
    "prompt is too long",
    "insufficient_quota": "You exceeded your current quota, please check your plan and billing",
    "overloaded_error": "Overloaded",
    "rate_limit_error": "Rate limit exceeded",
    "rate_limit_exceeded": "Rate limit exceeded",
}


def _error_object(api: str, status: int, error_type: str | None, message: str | None) -> Any:
    """The provider-shaped error body (the in-stream error event's data too)."""
    if api == "anthropic":
        kind = error_type if error_type and error_type.endswith("_error") else None
        kind = kind or _ANTHROPIC_TYPES.get(status) or "api_error"
        error: dict[str, Any] = {"type": kind}
        if error_type and error_type != kind:
            error["details"] = {"error_code": error_type}
        error["message"] = message or _MESSAGES.get(error_type or kind) or f"fake error {status}"
        return {"type": "error", "error": error}
    default_type = "invalid_request_error" if status < 500 else "server_error"
    if error_type == "insufficient_quota":
        default_type = "insufficient_quota"
    return {
        "error": {
            "message": message or _MESSAGES.get(error_type or "") or f"fake error {status}",
            "type": error_type if error_type and error_type.endswith("_error") else default_type,
            "param": None,
            "code": error_type or _OPENAI_CODES.get(status),
        }
    }


@dataclass
class _Totals:
    input: int
    output: int
    reasoning: int
    cache_read: int
    cache_write: int

    def openai(self) -> dict[str, Any]:
        prompt = self.input + self.cache_read  # OpenAI's prompt_tokens include cached ones
        return {
            "prompt_tokens": prompt,
            "completion_tokens": self.output,
            "total_tokens": prompt + self.output,
            "prompt_tokens_details": {
                "cached_tokens": self.cache_read,
                "cache_write_tokens": self.cache_write,
            },
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        }

    def anthropic(self, output: int | None = None) -> dict[str, Any]:
        return {
            "input_tokens": self.input,
            "output_tokens": self.output if output is None else output,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens_details": {"thinking_tokens": self.reasoning},
        }


class _OpenAIWire:
    """Chat Completions chunk frames."""

    def __init__(self, rid: str, model: str, include_usage: bool) -> None:
        self.rid, self.model, self.include_usage = rid, model, include_usage
        self.created = int(time.time())

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            None,
            {
                "id": self.rid,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            },
        )

    def start(self) -> list[bytes]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def reasoning(self, piece: str) -> list[bytes]:
        return [self._chunk({"reasoning_content": piece})]

    def text(self, piece: str) -> list[bytes]:
        return [self._chunk({"content": piece})]

    def error(self, error_type: str, message: str | None) -> list[bytes]:
        return [_sse(None, _error_object("openai", 500, error_type, message))]

    def finish(self, totals: _Totals, finish_reason: str | None) -> list[bytes]:
        frames = [self._chunk({}, finish_reason or "stop")]
        if self.include_usage:
            frames.append(
                _sse(
                    None,
                    {
                        "id": self.rid,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": totals.openai(),
                    },
                )
            )
        frames.append(b"data: [DONE]\n\n")
        return frames

    def whole(self, text: str, reasoning: str, totals: _Totals, finish: str | None) -> Any:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if reasoning:
            message["reasoning_content"] = reasoning
        return {
            "id": self.rid,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish or "stop",
                    "logprobs": None,
                }
            ],
            "usage": totals.openai(),
        }


class _AnthropicWire:
    """Messages stream events."""

    def __init__(self, rid: str, model: str, totals: _Totals) -> None:
        self.rid, self.model, self.totals = rid, model, totals
        self.index = -1
        self.open: str | None = None  # type of the open content block

    def _block(self, kind: str) -> list[bytes]:
        frames = self._close_block()
        self.index += 1
        self.open = kind
        block = (
            {"type": "text", "text": ""}
            if kind == "text"
            else {"type": "thinking", "thinking": "", "signature": ""}
        )
        frames.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )
        return frames

    def _close_block(self) -> list[bytes]:
        frames: list[bytes] = []
        if self.open == "thinking":
            frames.append(self._delta({"type": "signature_delta", "signature": "fakesig"}))
        if self.open is not None:
            frames.append(
                _sse("content_block_stop", {"type": "content_block_stop", "index": self.index})
            )
        self.open = None
        return frames

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _sse(
            "content_block_delta",
            {"type": "content_block_delta", "index": self.index, "delta": delta},
        )

    def start(self) -> list[bytes]:
        return [
            _sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": self.rid,
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": self.model,
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": self.totals.anthropic(output=1),
                    },
                },
            ),
            _sse("ping", {"type": "ping"}),
        ]

    def reasoning(self, piece: str) -> list[bytes]:
        frames = self._block("thinking") if self.open != "thinking" else []
        return [*frames, self._delta({"type": "thinking_delta", "thinking": piece})]

    def text(self, piece: str) -> list[bytes]:
        frames = self._block("text") if self.open != "text" else []
        return [*frames, self._delta({"type": "text_delta", "text": piece})]

    def error(self, error_type: str, message: str | None) -> list[bytes]:
        return [_sse("error", _error_object("anthropic", 500, error_type, message))]

    def finish(self, totals: _Totals, finish_reason: str | None) -> list[bytes]:
        return [
            *self._close_block(),
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": finish_reason or "end_turn", "stop_sequence": None},
                    "usage": totals.anthropic(),
                },
            ),
            _sse("message_stop", {"type": "message_stop"}),
        ]

    def whole(self, text: str, reasoning: str, totals: _Totals, finish: str | None) -> Any:
        content: list[dict[str, Any]] = []
        if reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": "fakesig"})
        content.append({"type": "text", "text": text})
        return {
            "id": self.rid,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": finish or "end_turn",
            "stop_sequence": None,
            "usage": totals.anthropic(),
        }


def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# --------------------------------------------------------------------------- request handling


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chatd-fakellm"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and benchmarks run thousands of requests

    # routing ---------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path == "/_fake/requests":
            self._json(200, [r.to_json() for r in self.server.fake.requests])
        elif self.path in ("/", "/healthz"):
            self._json(200, {"ok": True})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        try:
            body = self._read_json()
        except ValueError as exc:
            self._json(
                400, {"error": {"message": f"bad JSON: {exc}", "type": "invalid_request_error"}}
            )
            return
        path = self.path.split("?", 1)[0]
        if path == "/_fake/script":
            self._control_script(body)
        elif path == "/_fake/reset":
            self.server.fake.reset()
            self._json(200, {"ok": True})
        elif path in ("/v1/chat/completions", "/chat/completions"):
            self._completion("openai", body)
        elif path in ("/v1/messages", "/messages"):
            self._completion("anthropic", body)
        else:
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def _control_script(self, body: Any) -> None:
        try:
            if not isinstance(body, Mapping):
                raise ValueError("expected a JSON object")
            raw = body.get("responses", [body["response"]] if "response" in body else [])
            responses = [response_from_json(r) for r in raw]
            match = body.get("match")
            if match is not None and not isinstance(match, str):
                raise ValueError("match must be a string")
        except (TypeError, ValueError, KeyError) as exc:
            self._json(400, {"error": {"message": str(exc), "type": "invalid_request_error"}})
            return
        self.server.fake.script(*responses, match=match)
        self._json(200, {"queued": len(responses)})

    # completions -----------------------------------------------------------

    def _completion(self, api: str, body: Any) -> None:
        if not isinstance(body, dict):
            body = {}
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        request = RecordedRequest(
            api=api,
            path=self.path,
            model=body.get("model"),
            messages=cast(list[Any], messages),
            system=body.get("system"),
            stream=bool(body.get("stream")),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        seq, response = self.server.fake._record(request)
        rid = f"chatcmpl-fake-{seq}" if api == "openai" else f"msg_fake_{seq}"
        model = str(body.get("model") or "fake-model")

        if isinstance(response, Hang):
            if self.server.fake._stopping.wait(response.seconds):
                self.close_connection = True
                return
            response = response.then or Text(
                "echo: " + _DIRECTIVE.sub("", request.last_user_text).strip()
            )
        if isinstance(response, HttpError):
            payload = (
                response.body
                if response.body is not None
                else _error_object(api, response.status, response.error_type, response.message)
            )
            request.completed.set()
            self._json(response.status, payload, response.headers, rid)
            return

        text, reasoning, chunks, delay = "", "", 3, 0.0
        cut: int | None = None
        abort = False
        stream_error: StreamError | None = None
        usage = FakeUsage()
        finish: str | None = None
        if isinstance(response, Text):
            text, reasoning, chunks, delay = (
                response.text,
                response.reasoning,
                response.chunks,
                response.delay,
            )
            usage, finish = response.usage or usage, response.finish_reason
        elif isinstance(response, Truncate):
            text, chunks, delay = response.text, response.chunks, response.delay
            cut, abort = response.after_chunks, response.abort
        else:
            text, chunks, stream_error = response.text, response.chunks, response
        totals = _Totals(
            input=usage.input_tokens
            if usage.input_tokens is not None
            else _words(messages, body.get("system")),
            output=usage.output_tokens
            if usage.output_tokens is not None
            else max(1, len(text.split()) + len(reasoning.split())),
            reasoning=usage.reasoning_tokens or len(reasoning.split()),
            cache_read=usage.cache_read_tokens,
            cache_write=usage.cache_write_tokens,
        )
        wire: _OpenAIWire | _AnthropicWire
        if api == "openai":
            options = body.get("stream_options")
            include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
            wire = _OpenAIWire(rid, model, include_usage)
        else:
            wire = _AnthropicWire(rid, model, totals)

        if not request.stream:
            if cut is not None or stream_error is not None:
                # A non-streaming reply cannot be half-sent politely: drop the connection.
                self.close_connection = True
                return
            request.completed.set()
            self._json(200, wire.whole(text, reasoning, totals, finish), rid=rid)
            return

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._id_headers(rid)
        self.end_headers()

        ok = self._frames(request, wire.start())
        for piece in _split(reasoning, chunks):
            ok = ok and self._frames(request, wire.reasoning(piece)) and self._pause(delay)
        pieces = _split(text, chunks)
        for i, piece in enumerate(pieces):
            if not ok or (cut is not None and i >= cut):
                break
            if stream_error is not None and i >= stream_error.after_chunks:
                break
            last = i == len(pieces) - 1
            ok = self._frames(request, wire.text(piece)) and (last or self._pause(delay))
        if not ok:
            return
        if stream_error is not None:
            ok = self._frames(request, wire.error(stream_error.error_type, stream_error.message))
        elif cut is not None:
            if abort:
                self.close_connection = True  # no terminating chunk: the client sees EOF
                return
        else:
            request.completed.set()  # before the last write, so a client that saw it sees this
            ok = self._frames(request, wire.finish(totals, finish))
        if ok:
            self._write(request, b"0\r\n\r\n")

    # I/O helpers -------------------------------------------------------------

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw.strip() else {}

    def _id_headers(self, rid: str) -> None:
        self.send_header("x-request-id", f"req_{rid}")
        self.send_header("request-id", f"req_{rid}")

    def _json(
        self,
        status: int,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        rid: str | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if rid:
            self._id_headers(rid)
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _frames(self, request: RecordedRequest, frames: list[bytes]) -> bool:
        return all(self._write(request, b"%x\r\n%s\r\n" % (len(f), f)) for f in frames)

    def _write(self, request: RecordedRequest, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            return True
        except OSError:  # BrokenPipe / ConnectionReset: the client went away
            request.disconnected.set()
            self.close_connection = True
            return False

    def _pause(self, seconds: float) -> bool:
        """Sleep between chunks; False when the server is stopping."""
        return seconds <= 0 or not self.server.fake._stopping.wait(seconds)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `chatd fakellm`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; the root URL is the first line on stdout."""
    return run_forever(args.host, args.port)


def run_forever(host: str = "127.0.0.1", port: int = 0) -> int:
    """Serve on host:port until SIGINT or SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with FakeLLM(host, port) as fake:
            print(fake.url, flush=True)
            print(
                f"fakellm: OpenAI base_url {fake.openai_base_url}, "
                f"Anthropic base_url {fake.anthropic_base_url}",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.5):
                pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m chatd.fakellm [--host H] [--port N]`."""
    parser = argparse.ArgumentParser(prog="chatd fakellm", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
