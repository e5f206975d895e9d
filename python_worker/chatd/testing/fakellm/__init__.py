"""A scriptable fake LLM server for tests, demos and benchmarks.

Lives here: `script` (response types, directives, recorded requests),
`openai_wire`, `responses_wire` and `anthropic_wire` (the wire formats,
`frames` what they share), `server` (`FakeLLM`) and `handler` (request handling). Test-only:
the product never imports it; `chatd fakellm` and `chatd demo` run it.

A real HTTP server (stdlib `ThreadingHTTPServer`, one thread per connection)
that speaks just enough of three provider APIs for the official SDKs to parse:

- OpenAI Chat Completions, `POST /v1/chat/completions`, streaming (SSE chunks,
  a final usage chunk when `stream_options.include_usage`, `data: [DONE]`) and
  non-streaming;
- the OpenAI Responses API, `POST /v1/responses`, streaming (`response.created`,
  reasoning-summary and `output_text` deltas, then `response.completed`, or
  `response.incomplete` for a `length` / `content_filter` finish, with usage;
  `response.failed` or an `error` event for a `StreamError`) and
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
                        (Responses: `response.failed`)
    error-event         with error=CODE, Responses API: a bare `error` event
    retry-after=S       `retry-after` header (seconds, may be fractional)
    retry-after-ms=MS   `retry-after-ms` header
    chunks=N            split the reply into N chunks
    delay=S             seconds between chunks
    reply=WORDS         reply text instead of the echo (underscores become spaces)
    reasoning=WORDS     stream reasoning text first (underscores become spaces)
    truncate[=K]        end the stream after K text chunks (default 1) without
                        the terminal event
    truncate=finish     send the whole reply and the finish chunk (OpenAI's
                        `finish_reason` choice, Anthropic's `message_delta`),
                        then end before the usage chunk / `message_stop`
    abort               with truncate: drop the connection instead
    stall=S             with truncate: hold the connection silent S seconds first
    finish=REASON       the finish reason (`length`, `content_filter`, ...;
                        Anthropic `max_tokens`, `refusal`, ...)
    no-usage            no OpenAI usage chunk even when `include_usage` asks
    malformed[=K]       after K text chunks, a data line that is not JSON
    reply=              (empty) an empty reply
    hang=S              wait S seconds before sending anything (the reply or NNN)
    times=N             only the first N requests carrying this exact user
                        message obey the directive; later ones get the echo

For another process: `POST /_fake/script` with
`{"match": "...", "responses": [{"type": "text", "text": "hi"}, ...]}`
(types: text, error, truncate, hang, stream_error, malformed; fields as the
classes in `script`), `POST /_fake/reset`, `GET /_fake/requests`.

Auth checks: `FakeLLM(auth=DOCUMENTED_AUTH)` (or `fake.auth["anthropic"] =
"bearer"` for a gateway) makes a wire answer 401 unless the request carries
the named header: `bearer` (`Authorization: Bearer K`, no `x-api-key`) or
`x-api-key` (no `Authorization`); Anthropic requests also need
`anthropic-version`; the Responses API is checked by the `openai` entry.
Without `auth` every request is accepted. The Anthropic wire answers an
enabled `thinking` budget under 1024 or not below `max_tokens` with a 400.
"""
from chatd.testing.fakellm.script import (
    FakeResponse,
    FakeUsage,
    Hang,
    HttpError,
    Malformed,
    RecordedRequest,
    StreamError,
    Text,
    Truncate,
    response_from_json,
    response_to_json,
    script_remote,
)
from chatd.testing.fakellm.server import DOCUMENTED_AUTH, FakeLLM, run_forever

__all__ = [
    "DOCUMENTED_AUTH",
    "FakeLLM",
    "FakeResponse",
    "FakeUsage",
    "Hang",
    "HttpError",
    "Malformed",
    "RecordedRequest",
    "StreamError",
    "Text",
    "Truncate",
    "response_from_json",
    "response_to_json",
    "run_forever",
    "script_remote",
]
