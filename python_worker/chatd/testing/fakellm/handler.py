"""Request handling: route a request, pick its scripted response, and speak
it in the requested wire format at the scripted pace."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from chatd.testing.fakellm.anthropic_wire import AnthropicWire, thinking_refusal
from chatd.testing.fakellm.frames import Totals, error_object
from chatd.testing.fakellm.openai_wire import OpenAIWire
from chatd.testing.fakellm.responses_wire import ResponsesWire
from chatd.testing.fakellm.script import (
    DIRECTIVE,
    FakeUsage,
    Hang,
    HttpError,
    Malformed,
    RecordedRequest,
    StreamError,
    Text,
    Truncate,
    count_words,
    response_from_json,
    split_text,
)

if TYPE_CHECKING:
    from chatd.testing.fakellm.server import Server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chatd-fakellm"
    server: Server

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
        elif path in ("/v1/responses", "/responses"):
            self._completion("responses", body)
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
        messages, system = _conversation(api, body)
        request = RecordedRequest(
            api=api,
            path=self.path,
            model=body.get("model"),
            messages=messages,
            system=system,
            stream=bool(body.get("stream")),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        seq, response = self.server.fake._record(request)
        rid = {"openai": "chatcmpl-fake-", "responses": "resp_fake_"}.get(api, "msg_fake_") + str(seq)
        model = str(body.get("model") or "fake-model")
        family = "anthropic" if api == "anthropic" else "openai"  # error format, auth
        if self._refused(api, request, rid):
            return

        if isinstance(response, Hang):
            if self.server.fake._stopping.wait(response.seconds):
                self.close_connection = True
                return
            response = response.then or Text(
                "echo: " + DIRECTIVE.sub("", request.last_user_text).strip()
            )
        if isinstance(response, HttpError):
            payload = (
                response.body
                if response.body is not None
                else error_object(family, response.status, response.error_type, response.message)
            )
            request.completed.set()
            self._json(response.status, payload, response.headers, rid)
            return

        plan = _Plan.of(response, messages, system)
        wire: OpenAIWire | AnthropicWire | ResponsesWire
        if api == "responses":
            wire = ResponsesWire(rid, model, plan.send_usage)
        elif api == "openai":
            options = body.get("stream_options")
            include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
            wire = OpenAIWire(rid, model, include_usage and plan.send_usage)
        else:
            wire = AnthropicWire(rid, model, plan.totals)
        if plan.tool_calls and plan.finish is None:
            plan.finish = "tool_calls" if api == "openai" else "tool_use"

        if not request.stream:
            if plan.cut is not None or plan.stream_error is not None or plan.malformed:
                # A non-streaming reply cannot be half-sent politely: drop the connection.
                self.close_connection = True
                return
            request.completed.set()
            self._json(200, wire.whole(plan.text, plan.reasoning, plan.totals, plan.finish), rid=rid)
            return
        self._stream(request, rid, wire, plan)

    def _refused(self, api: str, request: RecordedRequest, rid: str) -> bool:
        """Answer 401 (auth check) or 400 (Anthropic `thinking` the API refuses)."""
        family = "anthropic" if api == "anthropic" else "openai"
        refusal = auth_refusal(family, request.headers, self.server.fake.auth.get(family))
        invalid = thinking_refusal(request.body) if api == "anthropic" else None
        if refusal is None and invalid is None:
            return False
        request.completed.set()
        if refusal is not None:
            self._json(401, error_object(family, 401, None, refusal), rid=rid)
        else:
            self._json(400, error_object(family, 400, "invalid_request_error", invalid), rid=rid)
        return True

    def _stream(
        self,
        request: RecordedRequest,
        rid: str,
        wire: OpenAIWire | AnthropicWire | ResponsesWire,
        plan: _Plan,
    ) -> None:
        """Send the planned reply as server-sent events, at the scripted pace."""
        # Long on purpose: one scripted reply's frames in wire order (start,
        # reasoning, text, tool calls, then the error, cut or finish), read top down.
        cut, stream_error, chunks, delay = plan.cut, plan.stream_error, plan.chunks, plan.delay
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._id_headers(rid)
        self.end_headers()

        ok = self._frames(request, wire.start())
        for piece in split_text(plan.reasoning, chunks):
            ok = ok and self._frames(request, wire.reasoning(piece)) and self._pause(delay)
        pieces = split_text(plan.text, chunks)
        for i, piece in enumerate(pieces):
            if not ok or (cut is not None and i >= cut):
                break
            if stream_error is not None and i >= stream_error.after_chunks:
                break
            last = i == len(pieces) - 1
            ok = self._frames(request, wire.text(piece)) and (last or self._pause(delay))
        # chatd offers no tools on the Responses API (llm/stream.py refuses them),
        # so the fake scripts tool calls on the Chat Completions and Messages wires only
        scripted_calls = [] if isinstance(wire, ResponsesWire) else plan.tool_calls
        for index, call in enumerate(scripted_calls):
            arguments = json.dumps(call.get("input") or {})
            half = len(arguments) // 2
            assert not isinstance(wire, ResponsesWire)
            ok = ok and self._frames(request, wire.tool_call(
                index, str(call.get("id") or f"call_{rid[-6:]}_{index}"), str(call["name"]),
                [arguments[:half], arguments[half:]],
            ))
        if not ok:
            return
        if isinstance(wire, ResponsesWire) and stream_error is not None:
            error = stream_error.error_type, stream_error.message, stream_error.event
            ok = self._frames(request, wire.error(*error))
        elif stream_error is not None:
            ok = self._frames(request, wire.error(stream_error.error_type, stream_error.message))
        elif plan.malformed:
            head = {AnthropicWire: b"event: content_block_delta\n",
                    ResponsesWire: b"event: response.output_text.delta\n"}.get(type(wire), b"")
            ok = self._frames(request, [head + b'data: {"id": "' + rid.encode() + b'", "choi\n\n'])
        elif cut is not None:
            if plan.after_finish:
                # the finish chunk, then nothing: no usage chunk / message_stop
                ok = self._frames(request, wire.finish(plan.totals, plan.finish)[:1])
            if not ok or not self._pause(plan.stall):
                return
            if plan.abort:
                self.close_connection = True  # no terminating chunk: the client sees EOF
                return
        else:
            request.completed.set()  # before the last write, so a client that saw it sees this
            ok = self._frames(request, wire.finish(plan.totals, plan.finish))
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


def _conversation(api: str, body: Mapping[str, Any]) -> tuple[list[Any], Any]:
    """(messages, system) of a request: Chat Completions and Messages
    `messages` (and `system`); Responses `input` (a string is one user
    message) and `instructions`."""
    if api == "responses":
        raw = body.get("input")
        if isinstance(raw, str):
            return [{"role": "user", "content": raw}], body.get("instructions")
        return (list(raw) if isinstance(raw, list) else []), body.get("instructions")
    raw = body.get("messages")
    return (list(raw) if isinstance(raw, list) else []), body.get("system")


def auth_refusal(api: str, headers: Mapping[str, str], scheme: str | None) -> str | None:
    """Why a request fails the wire's auth check, or None. `scheme`: None
    (accept anything), 'x-api-key' (the Anthropic API: `x-api-key` and
    `anthropic-version`, no bearer token) or 'bearer' (`Authorization: Bearer`)."""
    if scheme is None:
        return None
    bearer = headers.get("authorization", "")
    if scheme == "x-api-key":
        if not headers.get("x-api-key"):
            return "fakellm: missing x-api-key header" + (" (got Authorization)" if bearer else "")
        if bearer:
            return "fakellm: x-api-key and Authorization both sent"
    elif not bearer.startswith("Bearer ") or not bearer.removeprefix("Bearer ").strip():
        return "fakellm: missing Authorization: Bearer header"
    elif headers.get("x-api-key"):
        return "fakellm: Authorization and x-api-key both sent"
    if api == "anthropic" and not headers.get("anthropic-version"):
        return "fakellm: missing anthropic-version header"
    return None


@dataclass
class _Plan:
    """What to send for one scripted response (Text, Truncate or StreamError)."""

    text: str = ""
    reasoning: str = ""
    chunks: int = 3
    delay: float = 0.0
    cut: int | None = None
    abort: bool = False
    stall: float = 0.0
    after_finish: bool = False
    malformed: bool = False
    send_usage: bool = True
    stream_error: StreamError | None = None
    usage: FakeUsage = field(default_factory=FakeUsage)
    finish: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    totals: Totals = field(default_factory=lambda: Totals(0, 0, 0, 0, 0))

    @classmethod
    def of(cls, response: Any, messages: list[Any], system: Any) -> _Plan:
        plan = cls()
        if isinstance(response, Text):
            plan.text, plan.reasoning, plan.chunks, plan.delay = (
                response.text,
                response.reasoning,
                response.chunks,
                response.delay,
            )
            plan.usage, plan.finish = response.usage or plan.usage, response.finish_reason
            plan.send_usage = response.send_usage
            plan.tool_calls = response.tool_calls
        elif isinstance(response, Truncate):
            plan.text, plan.chunks, plan.delay = response.text, response.chunks, response.delay
            plan.cut, plan.abort = response.after_chunks, response.abort
            plan.stall, plan.after_finish = response.stall, response.after_finish
            if response.after_finish:
                plan.cut = len(plan.text) + 1  # every text piece goes out
        elif isinstance(response, Malformed):
            plan.text, plan.chunks, plan.malformed = response.text, response.chunks, True
            plan.cut = response.after_chunks
        else:
            plan.text, plan.chunks, plan.stream_error = response.text, response.chunks, response
        usage, text, reasoning = plan.usage, plan.text, plan.reasoning
        plan.totals = Totals(
            input=usage.input_tokens
            if usage.input_tokens is not None
            else count_words(messages, system),
            output=usage.output_tokens
            if usage.output_tokens is not None
            else max(1, len(text.split()) + len(reasoning.split())),
            reasoning=usage.reasoning_tokens or len(reasoning.split()),
            cache_read=usage.cache_read_tokens,
            cache_write=usage.cache_write_tokens,
        )
        return plan
