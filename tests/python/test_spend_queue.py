"""Spend limits and the queue (docs/spend-limits.md, "Queued messages").

Every way a queued message becomes a turn is an admission: send_message
checks the limit for every message, queued or not; finish_turn,
finish_turns and interrupt_chat re-check it when they promote the queue
head (for the chat's owner, in the chat's organization), and
promote_queued_message re-checks it too. A promotion refused by the limit
leaves the chat in ``error`` with a usage_limit ChatError, and the queued
message stays queued.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from chatd.testing import Factory

LIMIT = 1_000
# the fixture model's prices: 1 and 2 USD per million tokens, so 100 input
# and 100 output tokens cost 100 + 200 = 300 micro-dollars
USAGE = {"input_tokens": 100, "output_tokens": 100}
TURN_COST = 300
WORKER = "w-spend-queue"


@pytest.fixture
def limits_on(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => %s)", (LIMIT,))


def create_chat(conn: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID, model: uuid.UUID) -> uuid.UUID:
    row = conn.execute(
        "SELECT chatd.create_chat(%s, %s, '\"first\"', p_model_config_id => %s)", (user, org, model)
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def send(conn: psycopg.Connection[Any], user: uuid.UUID, chat: uuid.UUID, text: str = "next") -> dict[str, Any]:
    row = conn.execute("SELECT chatd.send_message(%s, %s, %s)", (user, chat, json.dumps(text))).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def claim(conn: psycopg.Connection[Any]) -> dict[uuid.UUID, int]:
    rows = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats(%s, 10)", (WORKER,)).fetchall()
    return {row[0]: row[1] for row in rows}


def finish(conn: psycopg.Connection[Any], chat: uuid.UUID, lease: int) -> None:
    conn.execute(
        "SELECT chatd.finish_turn(%s, %s, '\"answer\"', %s)", (chat, lease, json.dumps(USAGE))
    )


def spent(conn: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID) -> int:
    row = conn.execute(
        "SELECT spent_micros FROM chatd.usage_limit_status(%s, %s)", (user, org)
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def chat_row(conn: psycopg.Connection[Any], chat: uuid.UUID) -> tuple[str, dict[str, Any] | None, int]:
    row = conn.execute(
        "SELECT c.status::text, c.last_error, "
        "(SELECT count(*) FROM chatd.queued_messages AS q WHERE q.chat_id = c.id)::int "
        "FROM chatd.chats AS c WHERE c.id = %s",
        (chat,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def spender(factory: Factory) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    org = factory.org()
    user = factory.user(org)
    model = factory.model_config()  # priced: 1 and 2 USD per million tokens
    return org, user, model


def queued_behind_a_running_turn(
    conn: psycopg.Connection[Any], factory: Factory, spent_before: int
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, int]:
    """A chat running under a lease, with one message queued, and the owner's
    recorded spend at ``spent_before`` (through another chat)."""
    org, user, model = spender(factory)
    chat = create_chat(conn, user, org, model)
    lease = claim(conn)[chat]
    send(conn, user, chat, "queued")
    if spent_before:
        other = factory.chat(user, org=org, model=model)
        factory.message(other, role="assistant", cost_micros=spent_before)
    return org, user, chat, lease


@pytest.mark.usefixtures("limits_on")
def test_alternating_two_chats_through_the_queue_cannot_pass_the_limit(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """The reported bypass: two chats, each with a message queued while it
    runs, finished and promoted in turn. Once the spend reaches the limit,
    no turn may start; what runs already may finish, so spend stays below
    limit + one turn per chat."""
    org, user, model = spender(factory)
    chats = [create_chat(conn, user, org, model), create_chat(conn, user, org, model)]
    refused_sends = 0
    for _ in range(20):
        leases = claim(conn)
        if not leases:
            break
        for chat, lease in leases.items():
            try:
                send(conn, user, chat)  # the chat is running: queued
            except psycopg.errors.lookup("CD006"):
                refused_sends += 1
            finish(conn, chat, lease)
    total = spent(conn, user, org)
    assert total < LIMIT + len(chats) * TURN_COST, f"spent {total} of a {LIMIT} limit"
    assert refused_sends > 0
