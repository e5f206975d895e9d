"""The demo's last step: `chatd serve` in this process with the worker still
running, and the URL of the web page (with a token) to open."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from uuid import UUID

__all__ = ["serve_page"]


async def serve_page(app_dsn: str, user: UUID, org: UUID, port: int, say: Callable[[str], None]) -> None:
    """`chatd serve` in this process until Ctrl-C, with a fresh signing
    secret and a token for the demo user in the printed URL."""
    import secrets

    import uvicorn

    from chatd.http import ServeSettings, create_app, issue_token

    secret = secrets.token_urlsafe(32)
    app = create_app(ServeSettings(database_url=app_dsn, jwt_secret=secret, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    # Ctrl-C ends the serving, then the demo cleans up and exits 0 (uvicorn's
    # own handlers would re-raise the signal and skip the cleanup messages)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, lambda: setattr(server, "should_exit", True))
    token = issue_token(user, org, secret=secret, ttl_seconds=24 * 3600)
    say(f"chatd serve: open http://127.0.0.1:{port}/#token={token}")
    say("(the worker keeps running; Ctrl-C stops the demo)")
    await server.serve()
