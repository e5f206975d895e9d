"""chatd.listener.Listener: the one LISTEN connection of a client."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg

from chatd.listener import Listener


async def test_a_channel_change_mid_batch_loses_no_notification_of_that_batch(db: str) -> None:
    """Explicit interleaving: one transaction notifies 50 times (one batch
    on the wire); the first notification handled changes the channels (as a
    subscription closing does), which makes the listener re-arm. Every
    notification of the batch is still delivered."""
    got: list[str] = []
    armed = asyncio.Event()
    all_fifty = asyncio.Event()
    listener: Listener

    def on_notify(channel: str, payload: str) -> None:
        got.append(payload)
        if len(got) == 50:
            all_fifty.set()
        if len(got) == 1:
            listener.unlisten("other")  # a subscription went away mid-batch

    async def on_listening(channels: frozenset[str], generation: int) -> None:
        if "burst" in channels:
            armed.set()

    listener = Listener(db, application_name="test-listener", on_notify=on_notify,
                        on_listening=on_listening, poll_interval=0.05)
    listener.listen("burst")
    listener.listen("other")
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(10):
            await armed.wait()
        async with await psycopg.AsyncConnection.connect(db) as conn, conn.transaction():
            for i in range(50):
                await conn.execute("SELECT pg_notify('burst', %s)", (str(i),))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await all_fifty.wait()
    finally:
        listener.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert got == [str(i) for i in range(50)]
