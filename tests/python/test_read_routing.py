"""Client reads with a ``read_dsn`` (chatd.client.reads), on one server: the
routing rules that need no standby. A real hot standby (lag, paused replay)
is in tests/ha/test_replica_reads.py (``make test-ha``).

A frozen copy of the database stands in for a replica that has stopped
applying changes but still claims to be current (it is not in recovery, so
the LSN rule accepts it): only the version watermark keeps a subscriber
from applying its old answers."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg.types.json import Jsonb

from chatd.client import Client, MessageEvent
from chatd.testing import DatabaseServer, Factory

WAIT = 15.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chat(db: str) -> tuple[uuid.UUID, uuid.UUID]:
    """(user, chat): a waiting chat with one answered question."""
    with psycopg.connect(db, autocommit=True) as conn:
        factory = Factory(conn)
        org = factory.org()
        user = factory.user(org)
        factory.model_config(is_default=True)
        chat = factory.chat(user, org=org, text="question")
        lease = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 10)").fetchone()
        assert lease is not None
        conn.execute("SELECT chatd.finish_turn(%s, %s, %s, %s)",
                     (chat, lease[0], Jsonb([{"type": "text", "text": "first answer"}]),
                      Jsonb({"input_tokens": 1, "output_tokens": 1})))
    return user, chat


@pytest.fixture
def frozen_copy(pg: DatabaseServer, db: str, chat: tuple[uuid.UUID, uuid.UUID]) -> Iterator[str]:
    """A copy of ``db`` as it is now (with the chat), never updated again."""
    source = psycopg.conninfo.conninfo_to_dict(db)["dbname"]
    name = f"{source}_copy"
    dsn = pg.create_database(name, template=str(source))
    try:
        yield dsn
    finally:
        pg.drop_database(name)


@pytest.fixture
async def stale_client(db: str, frozen_copy: str) -> AsyncIterator[Client]:
    async with await Client.connect(db, read_dsn=frozen_copy, read_max_staleness=3600, max_size=4) as c:
        yield c


async def test_a_current_read_server_answers_snapshots_lists_and_pages(
    db: str, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user, chat_id = chat
    async with await Client.connect(db, read_dsn=db, max_size=2) as client:
        snapshot = await client.snapshot(user, chat_id)
        chats = await client.list_chats(user)
        assert [m.text for m in snapshot.messages] == ["question", "first answer"]
        assert [c.id for c in chats] == [chat_id]
        assert client.read_stats == {"replica": 2, "watermark": 1}


async def test_a_snapshot_older_than_a_seen_notification_is_read_again_from_the_primary(
    db: str, chat: tuple[uuid.UUID, uuid.UUID], stale_client: Client
) -> None:
    user, chat_id = chat
    async with stale_client.subscribe(user, chat_id) as sub:
        async with asyncio.timeout(WAIT):
            first = [await anext(sub) for _ in range(3)]  # 2 messages and the status
            assert [e.message.text for e in first if isinstance(e, MessageEvent)] == ["question", "first answer"]
            # another application writes; the copy never sees it
            with psycopg.connect(db, autocommit=True) as conn:
                conn.execute("SELECT chatd.send_message(%s, %s, %s)", (user, chat_id, Jsonb("second")))
            async for event in sub:
                if isinstance(event, MessageEvent):
                    assert event.message.text == "second"
                    break
    assert stale_client.read_stats["version"] >= 1
    assert stale_client.read_stats["replica"] == 1  # only the first snapshot


async def test_a_list_on_a_frozen_copy_misses_at_most_what_the_staleness_bound_allows(
    db: str, chat: tuple[uuid.UUID, uuid.UUID], frozen_copy: str
) -> None:
    """The bound is the caller's: with read_max_staleness=3600 the copy's
    answer stands (it is not in recovery, so it claims to be current). This
    is the documented trade: lists may lag by the bound."""
    user, _chat_id = chat
    with psycopg.connect(db, autocommit=True) as conn:
        org = conn.execute("SELECT organization_id FROM chatd.chats LIMIT 1").fetchone()
        assert org is not None
        Factory(conn).chat(user, org=org[0], text="made elsewhere")
    async with await Client.connect(db, read_dsn=frozen_copy, read_max_staleness=3600, max_size=2) as client:
        assert len(await client.list_chats(user)) == 1
        assert client.read_stats == {"replica": 1, "watermark": 1}


async def test_an_unreachable_read_server_sends_reads_to_the_primary_and_backs_off(
    db: str, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user, chat_id = chat
    dead = f"host=127.0.0.1 port={_closed_port()} dbname=nothing connect_timeout=1"
    async with await Client.connect(db, read_dsn=dead, max_size=2, timeout=2.0) as client:
        snapshot = await client.snapshot(user, chat_id)
        chats = await client.list_chats(user)
        assert len(snapshot.messages) == 2 and len(chats) == 1
        # the first read tried the replica; the second waited out its backoff on the primary
        assert client.read_stats == {"unavailable": 2, "watermark": 1}


async def test_a_chat_the_read_server_does_not_know_is_read_from_the_primary(
    pg: DatabaseServer, db: str, frozen_copy: str, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user, _chat_id = chat
    with psycopg.connect(db, autocommit=True) as conn:
        org = conn.execute("SELECT organization_id FROM chatd.chats LIMIT 1").fetchone()
        assert org is not None
        newer = Factory(conn).chat(user, org=org[0], text="made after the copy")
    async with await Client.connect(db, read_dsn=frozen_copy, read_max_staleness=3600, max_size=2) as client:
        snapshot = await client.snapshot(user, newer)
        assert [m.text for m in snapshot.messages] == ["made after the copy"]
        assert client.read_stats == {"error": 1, "watermark": 1}


async def test_this_clients_own_write_makes_the_next_read_wait_for_it(
    db: str, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Read-your-writes: after a write the next read fetches the primary's
    WAL position again and checks the read server has replayed it (here the
    read server is the primary itself, so it has)."""
    user, chat_id = chat
    async with await Client.connect(db, read_dsn=db, read_max_staleness=3600, max_size=2) as client:
        await client.list_chats(user)
        await client.list_chats(user)
        assert client.read_stats["watermark"] == 1  # within the staleness bound: no new position
        await client.send_message(user, chat_id, "again")
        await client.list_chats(user)
        assert client.read_stats["watermark"] == 2
        await client.list_chats(user)
        assert client.read_stats == {"replica": 4, "watermark": 2}


async def test_with_no_staleness_allowed_every_read_checks_the_primary_position(
    db: str, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user, _chat_id = chat
    async with await Client.connect(db, read_dsn=db, read_max_staleness=0, max_size=2) as client:
        for _ in range(3):
            await client.list_chats(user)
        assert client.read_stats == {"replica": 3, "watermark": 3}
