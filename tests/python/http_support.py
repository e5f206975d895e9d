"""Shared helpers of the HTTP tests: `chatd serve` apps on real sockets
(uvicorn on 127.0.0.1, a free port), tokens, an SSE reader."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import uvicorn

from chatd.http import ServeSettings, create_app, issue_token
from chatd.testing import as_role

SECRET = "test-secret-that-is-long-enough-for-hs256"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(db: str, **settings: Any) -> AsyncIterator[str]:
    """A `chatd serve` app (as the chatd_app login role) on a free port; yields its URL."""
    values: dict[str, Any] = {"database_url": as_role(db, "app"), "jwt_secret": SECRET,
                              "keepalive_seconds": 1.0}
    values.update(settings)
    async with serving_app(create_app(ServeSettings(**values))) as url:
        yield url


@asynccontextmanager
async def serving_app(app: Any) -> AsyncIterator[str]:
    """Any ASGI app under uvicorn on a free port of 127.0.0.1; yields its URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port,
                            log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(15):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(task, 15)


def bearer(user: UUID, org: UUID | None, ttl: int = 600, secret: str = SECRET) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue_token(user, org, secret=secret, ttl_seconds=ttl)}


@dataclass
class Sse:
    id: str | None
    event: str
    data: Any


async def sse_events(response: httpx.Response) -> AsyncIterator[Sse]:
    """The events of an open SSE response (comments skipped)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "event" in fields or "data" in fields:
                yield Sse(fields.get("id"), fields.get("event", "message"), json.loads(fields.get("data", "null")))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
