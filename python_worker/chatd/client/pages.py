"""The page loop of a snapshot read, shared by the primary and replica paths."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from uuid import UUID

from chatd.protocol import names, queries
from chatd.protocol.errors import ChatNotFound

__all__ = ["ScalarRunner", "snapshot_pages"]

#: Runs one statement and returns the first column of its first row.
ScalarRunner = Callable[[str, list[Any]], Awaitable[Any]]


async def snapshot_pages(
    run: ScalarRunner, user_id: UUID, chat_id: UUID, after_message_id: int, newest: int | None = None
) -> dict[str, Any]:
    """``chatd.get_chat_snapshot`` read page by page until no message page
    remains: the last page's value with every page's messages. The chat,
    queue and parts are those of the last page, so they are at least as new
    as every message returned. With ``newest``, one page: the newest
    ``newest`` messages (and ``before``, the cursor to older ones).
    ChatNotFound when the chat does not exist."""
    messages: list[Any] = []
    after = after_message_id
    while True:
        value = await run(
            queries.GET_CHAT_SNAPSHOT if newest is None else queries.GET_CHAT_SNAPSHOT_NEWEST,
            [user_id, chat_id, after] if newest is None else [user_id, chat_id, after, newest],
        )
        if not isinstance(value, Mapping):
            raise ChatNotFound(f"chat {chat_id} not found", sqlstate=names.CHAT_NOT_FOUND)
        page = value.get("messages") or []
        messages.extend(page)
        ids = [m["id"] for m in page if isinstance(m, Mapping) and isinstance(m.get("id"), int)]
        if not value.get("messages_more") or not ids:
            return {**value, "messages": messages}
        after = max(ids)
