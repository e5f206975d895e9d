"""acquire_chats writes out the first page of a turn's window (and whether
more follows) instead of calling chatd._message_page and
chatd._messages_after per chat; whatever a chat holds, the claim must hand
out exactly the page those two functions describe, which turn_history and
get_chat_snapshot page with."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from chatd.testing import Factory

MB = 1_000_000

Shape = Callable[[psycopg.Connection[Any], uuid.UUID], None]


def add(conn: psycopg.Connection[Any], chat: uuid.UUID, count: int, size: int = 10, **columns: Any) -> None:
    """Inserts, as chatd's owner, `count` user messages of about `size`
    characters each, with the given column values (visibility, deleted)."""
    names = "".join(f", {name}" for name in columns)
    values = "".join(", %s" for _ in columns)
    conn.execute("SET default_toast_compression = lz4")
    conn.execute(
        f"INSERT INTO chatd.messages (chat_id, role, content{names}) "
        "SELECT %s, 'user', jsonb_build_array(jsonb_build_object('type', 'text', 'text', "
        f"i::text || repeat('x', %s))){values} FROM generate_series(1, %s) AS i",
        (chat, size, *columns.values(), count),
    )


def short(conn: psycopg.Connection[Any], chat: uuid.UUID) -> None:
    add(conn, chat, 3)


def hidden_and_deleted(conn: psycopg.Connection[Any], chat: uuid.UUID) -> None:
    add(conn, chat, 2)
    add(conn, chat, 2, deleted=True)
    add(conn, chat, 2, visibility="user")
    add(conn, chat, 2, visibility="model")
    add(conn, chat, 1)


def over_the_message_limit(conn: psycopg.Connection[Any], chat: uuid.UUID) -> None:
    add(conn, chat, 250)


def over_the_byte_limit(conn: psycopg.Connection[Any], chat: uuid.UUID) -> None:
    add(conn, chat, 6, size=MB)


def first_message_over_the_byte_limit(conn: psycopg.Connection[Any], chat: uuid.UUID) -> None:
    # the page starts with it (the chat's first message deleted): it is empty
    conn.execute("UPDATE chatd.messages SET deleted = TRUE WHERE chat_id = %s", (chat,))
    add(conn, chat, 1, size=5 * MB)
    add(conn, chat, 2)


def hidden_after_the_page(conn: psycopg.Connection[Any], chat: uuid.UUID) -> None:
    add(conn, chat, 2)
    add(conn, chat, 3, visibility="user")
    add(conn, chat, 3, deleted=True)


def claim_page(
    conn: psycopg.Connection[Any], factory: Factory, shape: Shape
) -> tuple[list[int], list[int], bool, bool]:
    """The claim's page and history_complete for a chat of this shape, and
    what _message_page and _messages_after say of the same window."""
    org = factory.org()
    owner = factory.user(org)
    model = factory.model_config(is_default=True)
    # a window (10M tokens) that holds these histories whole: what is paged
    # here is the window itself
    conn.execute("UPDATE chatd.model_configs SET context_limit = 10000000 WHERE id = %s", (model,))
    chat = factory.chat(owner, org=org, model=model, text="first")
    shape(conn, chat)

    messages, complete, context = conn.execute(
        "SELECT messages, history_complete, context FROM chatd.acquire_chats('w1', 1) WHERE chat_id = %s", (chat,)
    ).fetchone()  # type: ignore[misc]
    after_id = (int(context["start_id"]) - 1) if context["start_id"] is not None else int(context["floor_id"])
    head = {context["system_id"], context["summary_id"]} - {None}
    page = [m["id"] for m in messages if m["id"] not in head]
    expected = [row[0] for row in conn.execute(
        "SELECT p.id FROM chatd._message_page(%s, %s, TRUE, 200, 4194304, FALSE) AS p", (chat, after_id)
    )]
    more = conn.execute(
        "SELECT chatd._messages_after(%s, %s, TRUE)", (chat, page[-1] if page else after_id)
    ).fetchone()[0]  # type: ignore[index]
    return page, expected, complete, more


@pytest.mark.parametrize(
    "shape",
    [short, hidden_and_deleted, over_the_message_limit, over_the_byte_limit, first_message_over_the_byte_limit,
     hidden_after_the_page],
)
def test_the_claim_hands_out_the_page_message_page_describes(
    conn: psycopg.Connection[Any], factory: Factory, shape: Shape
) -> None:
    page, expected, complete, more = claim_page(conn, factory, shape)
    assert page == expected
    assert complete is (not more)


def test_a_first_message_over_4_mb_leaves_the_page_empty_and_the_history_incomplete(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    page, _expected, complete, _more = claim_page(conn, factory, first_message_over_the_byte_limit)
    assert page == []
    assert complete is False
