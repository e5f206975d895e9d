"""Shared helpers for tests that run a real worker against a fake LLM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import psycopg

from chatd.config import WorkerConfig
from chatd.testing import as_role
from chatd.worker import Worker


def worker_config(dsn: str, *, login_role: bool = True, **overrides: Any) -> WorkerConfig:
    """A worker connecting, as in production, as a login role in chatd_worker
    (``login_role=False``: as the DSN's own user)."""
    settings: dict[str, Any] = {
        "database_url": as_role(dsn, "worker") if login_role else dsn,
        "worker_id": "test-worker",
        "max_chats": 10,
        "poll_interval": 0.2,
        "heartbeat_interval": 0.5,
        "recover_interval": 0.5,
        "janitor_interval": 60.0,
        "shutdown_grace": 5.0,
        "db_timeout": 5.0,
    }
    settings.update(overrides)
    return WorkerConfig(**settings)


@asynccontextmanager
async def running_worker(config: WorkerConfig, **kwargs: Any) -> AsyncIterator[Worker]:
    """A worker running in this event loop until the block ends."""
    worker = Worker(config, **kwargs)
    task = asyncio.create_task(worker.run())
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait([task, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # re-raise the start-up failure
    assert ready in done, "worker did not become ready"
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 30, what: str = "condition"
) -> None:
    """Poll an observable condition until it holds (never a blind sleep)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def chat_row(dsn: str, chat_id: UUID) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT status::text, attempt, lease, worker_id, last_error, next_attempt_at - now(), "
            "retry_state FROM chatd.chats WHERE id = %s",
            (chat_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    keys = ("status", "attempt", "lease", "worker_id", "last_error", "retry_in", "retry_state")
    return dict(zip(keys, row, strict=True))


async def status_is(dsn: str, chat_id: UUID, *statuses: str) -> bool:
    return (await chat_row(dsn, chat_id))["status"] in statuses


async def messages(dsn: str, chat_id: UUID, role: str | None = None) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT id, role::text, content, input_tokens, output_tokens, total_cost_micros, "
            "provider_response_id, runtime_ms, deleted, finish_reason, created_at FROM chatd.messages "
            "WHERE chat_id = %s AND (%s::text IS NULL OR role::text = %s) ORDER BY id",
            (chat_id, role, role),
        )
        rows = await cur.fetchall()
    keys = ("id", "role", "content", "input_tokens", "output_tokens", "total_cost_micros",
            "provider_response_id", "runtime_ms", "deleted", "finish_reason", "created_at")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def text_of(content: list[dict[str, Any]]) -> str:
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def worker_process(db: str, worker_id: str) -> subprocess.Popen[str]:
    """A real `chatd worker` process (for SIGKILL tests), as a chatd_worker login."""
    return subprocess.Popen(
        [sys.executable, "-m", "chatd", "worker", "--database-url", as_role(db, "worker"), "--worker-id", worker_id,
         "--poll-interval", "0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )
