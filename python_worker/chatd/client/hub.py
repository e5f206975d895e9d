"""The one shared listener connection of a client's subscriptions: which
subscriptions follow which chat channel, LISTEN/UNLISTEN as they come and
go, and the hand-off of each notification (a hint) to them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from chatd.client.subscription import _CLOSED, _RESYNC
from chatd.listener import Listener
from chatd.protocol.names import chat_channel

if TYPE_CHECKING:
    from chatd.client.subscription import Subscription

__all__ = ["Hub"]

log = logging.getLogger("chatd.client")


class Hub:
    """Subscriptions by channel over one `Listener` (started on first use)."""

    def __init__(
        self, dsn: str, *, application_name: str, listen_poll: float, timeout: float,
        poll_interval: float | None,
    ) -> None:
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._subs: dict[str, set[Subscription]] = {}
        self._listener = Listener(
            dsn,
            application_name=f"{application_name} listener",
            on_notify=self._dispatch,
            on_listening=self._on_listening,
            poll_interval=listen_poll,
            command_timeout=timeout,
        )
        self._listener_task: asyncio.Task[None] | None = None

    @property
    def listener_pid(self) -> int | None:
        """Backend pid of the listener connection (None when not connected)."""
        return self._listener.backend_pid

    async def close(self) -> None:
        """End every subscription and stop the listener."""
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub._queue.put_nowait(_CLOSED)
        if self._listener_task is not None:
            self._listener.stop()
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener_task
            self._listener_task = None

    def _ensure_listener(self) -> None:
        if self._listener_task is None or self._listener_task.done():
            self._listener_task = asyncio.create_task(
                self._listener.run(), name="chatd-client listener"
            )

    async def register(self, sub: Subscription) -> None:
        """Follow the subscription's channel; returns once LISTEN is armed."""
        channel = chat_channel(sub.chat_id)
        self._subs.setdefault(channel, set()).add(sub)
        if self.poll_interval is not None:  # polling: nothing to arm
            if not sub._armed.done():
                sub._armed.set_result(None)
            return
        self._ensure_listener()
        self._listener.listen(channel)
        async with asyncio.timeout(self.timeout):
            await asyncio.shield(sub._armed)

    def unregister(self, sub: Subscription) -> None:
        """Stop following; UNLISTEN when it was the channel's last subscription."""
        channel = chat_channel(sub.chat_id)
        subs = self._subs.get(channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[channel]
                self._listener.unlisten(channel)

    async def _on_listening(self, listening: frozenset[str], generation: int) -> None:
        """Arm new subscriptions; tell the others to re-read after a
        reconnect, since notifications sent while deaf are lost."""
        for channel in listening:
            for sub in list(self._subs.get(channel, ())):
                if not sub._armed.done():
                    sub._generation = generation
                    sub._armed.set_result(None)
                elif sub._generation != generation:
                    sub._generation = generation
                    sub._queue.put_nowait(_RESYNC)

    def _dispatch(self, channel: str, payload: str) -> None:
        subs = self._subs.get(channel)
        if not subs:
            return
        try:
            hint = json.loads(payload)
        except ValueError:
            log.warning("ignoring a malformed notification on %s", channel)
            return
        if not isinstance(hint, dict):
            return
        for sub in subs:
            sub._queue.put_nowait(hint)
