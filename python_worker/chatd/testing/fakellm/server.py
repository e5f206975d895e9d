"""The fake server: `FakeLLM` (start, script, inspect, stop) and its HTTP
server, plus `run_forever` for `chatd fakellm`."""

from __future__ import annotations

import signal
import socket
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

from chatd.testing.fakellm.handler import Handler
from chatd.testing.fakellm.script import (
    DIRECTIVE,
    FakeResponse,
    HttpError,
    RecordedRequest,
    Text,
    context_error,
    parse_directive,
    prompt_tokens,
)

#: The auth headers the real APIs document: OpenAI a bearer token, Anthropic
#: `x-api-key` (plus `anthropic-version`).
DOCUMENTED_AUTH: Mapping[str, str] = {"openai": "bearer", "anthropic": "x-api-key"}


class FakeLLM:
    """The fake server; `with FakeLLM() as fake:` starts it on 127.0.0.1, a free port."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, auth: Mapping[str, str] | None = None
    ) -> None:
        #: auth header each wire requires ('openai' / 'anthropic' -> 'bearer' or
        #: 'x-api-key'); a wire not named accepts any request. `DOCUMENTED_AUTH`
        #: is what the real APIs document. Refusals are 401s in the wire's format.
        self.auth: dict[str, str] = dict(auth or {})
        #: tokens of a prompt this fake accepts (None: any). A longer prompt
        #: gets the wire's real context-length 400 (`context_error`), counted
        #: from the request as sent (`prompt_tokens`), and consumes no
        #: scripted response.
        self.context_window: int | None = None
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._queue: list[tuple[str | None, FakeResponse]] = []
        self._requests: list[RecordedRequest] = []
        self._directive_uses: dict[str, int] = {}
        self._stopping = threading.Event()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------

    def start(self) -> FakeLLM:
        """Bind and serve in a daemon thread."""
        server = Server((self._host, self._port), Handler)
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
            window = self.context_window
            if window is not None and (used := prompt_tokens(request.messages, request.system)) > window:
                return seq, context_error(request.api, used, window)
            for wanted in (True, False):
                for i, (match, response) in enumerate(self._queue):
                    if (match is not None) == wanted and (match is None or match in text):
                        del self._queue[i]
                        return seq, response
            return seq, self._from_directives(text)

    def _from_directives(self, text: str) -> FakeResponse:
        """Response for the prompt's `[[fake:...]]` directive; the echo without one. Locked."""
        found = DIRECTIVE.search(text)
        echo = "echo: " + DIRECTIVE.sub("", text).strip()
        if found is None:
            return Text(echo)
        try:
            response, times = parse_directive(found.group(1), echo)
        except ValueError as exc:
            return HttpError(400, "invalid_request_error", f"fakellm: {exc}")
        if times is not None:
            used = self._directive_uses.get(text, 0)
            self._directive_uses[text] = used + 1
            if used >= times:
                return Text(echo)
        return response


class Server(ThreadingHTTPServer):
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
