"""Reads off a real hot standby (the pg_auto_failover secondary): used while
it has replayed enough, never for a snapshot older than a notification the
subscriber has seen, and never when it lags, is paused or is gone."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from autofailover import Formation, Node
from psycopg.types.json import Jsonb

from chatd.client import Client, MessageEvent
from chatd.testing import Factory, as_role

pytestmark = pytest.mark.timeout(300)

WAIT = 30.0


def _nodes(formation: Formation) -> tuple[Node, Node]:
    primary = formation.primary()
    [standby] = [n for n in formation.nodes if n is not primary]
    return primary, standby


def _wait_replayed(formation: Formation) -> None:
    """Until the standby has replayed everything the primary has written."""
    primary, standby = _nodes(formation)
    with psycopg.connect(formation.node_dsn(primary), autocommit=True) as p, \
            psycopg.connect(formation.node_dsn(standby), autocommit=True) as s:
        row = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        deadline = time.monotonic() + WAIT
        while not (r := s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", row).fetchone()) or not r[0]:
            assert time.monotonic() < deadline, "the standby did not replay the primary's WAL"
            time.sleep(0.02)


@contextlib.contextmanager
def paused(formation: Formation) -> Iterator[None]:
    """The standby with WAL replay paused (it still receives and flushes
    WAL, so synchronous commits go on), once it has replayed everything."""
    _wait_replayed(formation)
    _primary, standby = _nodes(formation)
    with psycopg.connect(formation.node_dsn(standby), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        try:
            yield
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")


@pytest.fixture
def chat(formation: Formation) -> tuple[uuid.UUID, uuid.UUID]:
    """(user, chat) on the primary: a chat waiting after one answered turn."""
    with psycopg.connect(formation.dsn(), autocommit=True) as conn:
        factory = Factory(conn)
        org = factory.org()
        user = factory.user(org=org)
        model = factory.model_config()
        chat = factory.chat(user, org=org, model=model, text="question")
        row = conn.execute("SELECT lease FROM chatd.acquire_chats('replica-test', 100) WHERE chat_id = %s",
                           (chat,)).fetchone()
        assert row is not None
        conn.execute("SELECT chatd.finish_turn(%s, %s, %s, %s)",
                     (chat, row[0], Jsonb([{"type": "text", "text": "first answer"}]),
                      Jsonb({"input_tokens": 1, "output_tokens": 1})))
    return user, chat


async def _prime(formation: Formation, client: Client, user: uuid.UUID) -> None:
    """Fix the client's watermark (a read: from either server), then wait
    until the standby has replayed past it, so that the next reads of this
    client pass the LSN check however much WAL the primary writes meanwhile
    (a client allowed an hour of staleness keeps that watermark)."""
    await client.list_chats(user)
    await asyncio.to_thread(_wait_replayed, formation)


def _client(formation: Formation, **kwargs: Any) -> Client:
    primary, standby = _nodes(formation)
    return Client(as_role(formation.dsn(), "app"), read_dsn=as_role(formation.node_dsn(standby), "app"),
                  timeout=5.0, max_size=4, **kwargs)


async def test_a_standby_that_has_replayed_everything_answers_the_reads(
    formation: Formation, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user, chat_id = chat
    async with _client(formation, read_max_staleness=3600) as client:
        await client.open()
        await _prime(formation, client, user)
        snapshot = await client.snapshot(user, chat_id)
        chats = await client.list_chats(user)
    assert [m.text for m in snapshot.messages] == ["question", "first answer"]
    assert [c.id for c in chats] == [chat_id]
    assert client.read_stats["replica"] >= 2


async def test_a_running_chats_snapshot_from_the_standby_gets_its_parts_from_the_primary(
    formation: Formation, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """stream_parts is UNLOGGED: a standby has no rows for it and cannot
    plan a query on it. The standby's snapshot says parts_more; the client
    reads the parts on the primary."""
    user, chat_id = chat
    with psycopg.connect(formation.dsn(), autocommit=True) as conn:
        conn.execute("SELECT chatd.send_message(%s, %s, %s)", (user, chat_id, Jsonb("again")))
        row = conn.execute("SELECT lease FROM chatd.acquire_chats('replica-test', 100) WHERE chat_id = %s",
                           (chat_id,)).fetchone()
        assert row is not None
        conn.execute("SELECT chatd.publish_parts(%s, %s, 0, %s)",
                     (chat_id, row[0], Jsonb([{"type": "text", "text": "stream"}])))
    await asyncio.to_thread(_wait_replayed, formation)
    _primary, standby = _nodes(formation)
    with psycopg.connect(formation.node_dsn(standby), autocommit=True) as conn:
        got = conn.execute("SELECT chatd.get_chat_snapshot(%s, %s)", (user, chat_id)).fetchone()
    assert got is not None
    assert (got[0]["parts"], got[0]["parts_more"], got[0]["chat"]["status"]) == ([], True, "running")
    async with _client(formation, read_max_staleness=3600) as client:
        await client.open()
        await _prime(formation, client, user)
        snapshot = await client.snapshot(user, chat_id)
    assert client.read_stats["replica"] >= 1 and client.read_stats["lag"] == 0
    assert [p.parts for p in snapshot.parts] == [[{"type": "text", "text": "stream"}]]


async def test_a_subscriber_never_applies_a_snapshot_older_than_a_notification_it_saw(
    formation: Formation, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Replay paused after the first read: the standby still passes the LSN
    check of a client allowed an hour of staleness, but its snapshot is
    older than the notification of the new message, so the primary is read."""
    user, chat_id = chat
    async with _client(formation, read_max_staleness=3600) as client:
        await client.open()
        await client.list_chats(user)  # the watermark; paused() waits until it is replayed
        with paused(formation):
            texts = await _follow_while_another_app_writes(formation, client, user, chat_id)
    assert texts == ["question", "first answer", "while paused"]
    assert client.read_stats["version"] >= 1


async def _follow_while_another_app_writes(
    formation: Formation, client: Client, user: uuid.UUID, chat_id: uuid.UUID
) -> list[str]:
    async with client.subscribe(user, chat_id, after_message_id=0) as sub:
        async with asyncio.timeout(WAIT):
            texts: list[str] = []
            async for event in sub:
                if isinstance(event, MessageEvent):
                    texts.append(event.message.text)
                    if texts == ["question", "first answer"]:
                        with psycopg.connect(formation.dsn(), autocommit=True) as conn:
                            conn.execute("SELECT chatd.send_message(%s, %s, %s)",
                                         (user, chat_id, Jsonb("while paused")))
                    if event.message.text == "while paused":
                        return texts
    raise AssertionError(f"subscription ended early: {texts}")


async def test_a_paused_standby_behind_the_staleness_bound_is_not_read(
    formation: Formation, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user, _chat_id = chat
    with paused(formation):
        with psycopg.connect(formation.dsn(), autocommit=True) as conn:
            org = conn.execute("SELECT organization_id FROM chatd.chats WHERE owner_id = %s", (user,)).fetchone()
            assert org is not None
            Factory(conn).chat(user, org=org[0], text="after the pause")
        async with _client(formation, read_max_staleness=0.5) as client:
            await client.open()
            chats = await client.list_chats(user)
    assert len(chats) == 2
    assert client.read_stats["lag"] == 1 and client.read_stats["replica"] == 0


async def test_this_clients_own_write_is_read_back_while_the_standby_is_paused(
    formation: Formation, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    """Read-your-writes with an hour of staleness allowed: the client's own
    write moves the watermark, so the paused standby is passed over."""
    user, chat_id = chat
    async with _client(formation, read_max_staleness=3600) as client:
        await client.open()
        before = await client.snapshot(user, chat_id)  # the watermark; paused() waits until it is replayed
        with paused(formation):
            lag = client.read_stats["lag"]
            await client.send_message(user, chat_id, "mine")
            after = await client.snapshot(user, chat_id)
    assert [m.text for m in after.messages][-1] == "mine" and len(after.messages) == len(before.messages) + 1
    assert client.read_stats["lag"] == lag + 1


async def test_reads_go_to_the_primary_while_the_standby_is_down(
    formation: Formation, chat: tuple[uuid.UUID, uuid.UUID]
) -> None:
    user, chat_id = chat
    _primary, standby = _nodes(formation)
    formation.kill(standby)
    try:
        async with _client(formation) as client:
            await client.open()
            snapshot = await client.snapshot(user, chat_id)
            chats = await client.list_chats(user)
        assert len(snapshot.messages) >= 2 and chat_id in [c.id for c in chats]
        assert client.read_stats["unavailable"] == 2 and client.read_stats["replica"] == 0
    finally:
        formation.restart(standby)
        formation.wait_states({_primary.name: "primary", standby.name: "secondary"}, 120)
