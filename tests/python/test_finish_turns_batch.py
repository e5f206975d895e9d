"""chatd.finish_turns finishes the plain turns of a batch together (one INSERT,
one UPDATE) and every other turn through finish_turn: what it writes must not
depend on which path a turn took."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from chatd.testing import Factory

WORKER = "w-batch"
USAGE = {"input_tokens": 10, "output_tokens": 5, "reasoning_tokens": 2, "cache_read_tokens": 3}
# columns that differ between two chats by construction
CHAT_IDENTITY = {"id", "root_chat_id", "created_at", "updated_at", "started_at", "next_attempt_at", "title"}
MESSAGE_IDENTITY = {"id", "chat_id", "created_at"}


def new_chat(conn: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID) -> uuid.UUID:
    row = conn.execute("SELECT chatd.create_chat(%s, %s, '\"question\"')", (user, org)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def claim(conn: psycopg.Connection[Any]) -> dict[uuid.UUID, int]:
    rows = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats(%s, 50)", (WORKER,)).fetchall()
    return {row[0]: row[1] for row in rows}


def turn(chat: uuid.UUID, lease: int, text: str = "the answer") -> dict[str, Any]:
    return {
        "chat_id": str(chat), "lease": lease, "content": [{"type": "text", "text": text}], "usage": USAGE,
        "provider_response_id": "resp-1", "runtime_ms": 42, "finish_reason": "stop",
    }


def row(conn: psycopg.Connection[Any], sql: str, *args: Any) -> dict[str, Any]:
    cur = conn.execute(sql, args)
    found = cur.fetchone()
    assert found is not None and cur.description is not None
    return dict(zip([c.name for c in cur.description], found, strict=True))


def test_a_plain_turn_finished_in_a_batch_is_stored_as_finish_turn_stores_it(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    user = factory.user(org)
    factory.model_config(is_default=True, input_price=1, output_price=2, cache_read_price=1)
    alone, batched = new_chat(conn, user, org), new_chat(conn, user, org)
    leases = claim(conn)
    conn.execute(
        "SELECT chatd.finish_turn(%s, %s, %s, %s, 'resp-1', 42, '[]', 'stop')",
        (alone, leases[alone], json.dumps(turn(alone, 0)["content"]), json.dumps(USAGE)),
    )
    [(chat_id, message_id)] = conn.execute(
        "SELECT chat_id, message_id FROM chatd.finish_turns(%s)", (json.dumps([turn(batched, leases[batched])]),)
    ).fetchall()
    assert chat_id == batched and message_id is not None

    replies = [
        row(conn, "SELECT * FROM chatd.messages WHERE chat_id = %s AND role = 'assistant'", chat)
        for chat in (alone, batched)
    ]
    assert replies[1]["id"] == message_id
    assert replies[1]["total_cost_micros"] == 10 * 1 + 5 * 2 + 3 * 1
    assert {k: v for k, v in replies[0].items() if k not in MESSAGE_IDENTITY} == {
        k: v for k, v in replies[1].items() if k not in MESSAGE_IDENTITY
    }
    chats = [row(conn, "SELECT * FROM chatd.chats WHERE id = %s", chat) for chat in (alone, batched)]
    assert chats[1]["status"] == "waiting" and chats[1]["lease"] == leases[batched] + 1
    assert {k: v for k, v in chats[0].items() if k not in CHAT_IDENTITY} == {
        k: v for k, v in chats[1].items() if k not in CHAT_IDENTITY
    }


def test_a_batch_mixing_plain_queued_lost_and_repeated_turns_finishes_each_as_alone(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    user = factory.user(org)
    factory.model_config(is_default=True)
    plain, queued, lost, twice = (new_chat(conn, user, org) for _ in range(4))
    leases = claim(conn)
    conn.execute("SELECT chatd.send_message(%s, %s, '\"and then?\"')", (user, queued))
    batch = [
        turn(plain, leases[plain]),
        turn(queued, leases[queued]),
        turn(lost, leases[lost] - 1),
        turn(twice, leases[twice], "first"),
        turn(twice, leases[twice], "second"),
    ]
    rows = conn.execute("SELECT chat_id, message_id FROM chatd.finish_turns(%s)", (json.dumps(batch),)).fetchall()
    got: dict[uuid.UUID, list[int | None]] = {}
    for chat_id, message_id in rows:
        got.setdefault(chat_id, []).append(message_id)

    def status(chat: uuid.UUID) -> str:
        return str(row(conn, "SELECT status::text AS s FROM chatd.chats WHERE id = %s", chat)["s"])

    def texts(chat: uuid.UUID) -> list[tuple[str, str]]:
        return [
            (r[0], r[1]) for r in conn.execute(
                "SELECT role::text, content -> 0 ->> 'text' FROM chatd.messages WHERE chat_id = %s ORDER BY id",
                (chat,),
            ).fetchall()
        ]

    assert len(rows) == len(batch)
    assert got[plain][0] is not None and status(plain) == "waiting"
    # the queue head goes out as the next turn (finish_turn's path)
    assert got[queued][0] is not None and status(queued) == "pending"
    assert texts(queued) == [("user", "question"), ("assistant", "the answer"), ("user", "and then?")]
    assert got[lost] == [None] and status(lost) == "running", "a lost lease writes nothing"
    # the same chat twice: the first finishes it, the second finds the lease gone
    assert sorted(got[twice], key=lambda m: m is None) == [got[twice][0] or got[twice][1], None]
    assert texts(twice) == [("user", "question"), ("assistant", "first")]
