"""Streams are neither readable nor forgeable through LISTEN/NOTIFY (issue 10,
item 3). PostgreSQL lets every login LISTEN on and NOTIFY to any channel, so
notifications carry no content and the client treats them as hints only:
parts are read through the authorized chatd.get_stream_parts."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from chatd.client import Client, MessageEvent, PartsEvent, StatusEvent
from chatd.testing import DatabaseServer, Factory

PASSWORD = "chatd-test-password"
WAIT = 15.0


@pytest.fixture
def connect_only_login(pg: DatabaseServer, db: str) -> Iterator[str]:
    """DSN of a fresh login role with no chatd privilege: only the default
    CONNECT every role has."""
    name = f"chatd_test_nobody_{uuid.uuid4().hex[:10]}"
    with pg.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(PASSWORD)))
    try:
        yield psycopg.conninfo.make_conninfo(db, user=name, password=PASSWORD)
    finally:
        with pg.admin() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def publish(conn: psycopg.Connection[Any], chat: uuid.UUID, lease: int, seq: int, text: str) -> None:
    conn.execute("SELECT chatd.publish_parts(%s, %s, %s, %s)",
                 (chat, lease, seq, Jsonb([{"type": "text", "text": text}])))


def test_a_connect_only_login_listening_on_a_chat_reads_no_streamed_text(
    conn: psycopg.Connection[Any], factory: Factory, connect_only_login: str
) -> None:
    org = factory.org()
    owner = factory.user(org)
    factory.model_config(is_default=True)
    chat = factory.chat(owner, org=org, text="a question")
    with psycopg.connect(connect_only_login, autocommit=True) as spy:
        spy.execute("LISTEN chatd_wake")
        spy.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"chatd_chat_{chat}")))
        spy.execute("LISTEN spy_sentinel")
        [(lease,)] = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 1)").fetchall()
        for seq in range(3):
            publish(conn, chat, lease, seq, f"SECRET-{seq} ")
        conn.execute("SELECT chatd.finish_turn(%s, %s, %s)",
                     (chat, lease, Jsonb([{"type": "text", "text": "SECRET-0 SECRET-1 SECRET-2"}])))
        conn.execute("SELECT pg_notify('spy_sentinel', 'end')")
        heard = []
        for note in spy.notifies(timeout=WAIT):
            if note.channel == "spy_sentinel":
                break
            heard.append(json.loads(note.payload))
        parts = [h for h in heard if h.get("kind") == "parts"]
        assert [p["seq"] for p in parts] == [0, 1, 2], "the spy learns that parts exist..."
        assert all(set(p) == {"kind", "chat_id", "lease", "seq"} for p in parts)
        assert not any("SECRET" in json.dumps(h) for h in heard), "...but never their text"
        # nor can it read them through chatd
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            spy.execute("SELECT * FROM chatd.get_stream_parts(%s, %s, %s, %s)", (owner, [chat], [lease], [-1]))


async def test_a_forged_parts_notification_never_shows_as_model_output(
    db: str, conn: psycopg.Connection[Any], factory: Factory, connect_only_login: str
) -> None:
    org = factory.org()
    owner = factory.user(org)
    factory.model_config(is_default=True)
    async with await Client.connect(db, max_size=2) as client:
        chat = await client.create_chat(owner, org, "hello")
        async with client.subscribe(owner, chat) as sub:
            events: list[Any] = []
            async with asyncio.timeout(WAIT):
                while not any(isinstance(e, StatusEvent) and e.status == "pending" for e in events):
                    events.append(await anext(sub))
                [(lease,)] = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 1)").fetchall()
                while not any(isinstance(e, StatusEvent) and e.status == "running" for e in events):
                    events.append(await anext(sub))
                with psycopg.connect(connect_only_login, autocommit=True) as forger:
                    for seq in (0, 1, 7):
                        forged = {"kind": "parts", "chat_id": str(chat), "lease": lease, "seq": seq,
                                  "parts": [{"type": "text", "text": "FORGED"}]}
                        forger.execute("SELECT pg_notify(%s, %s)", (f"chatd_chat_{chat}", json.dumps(forged)))
                words = [f"real{i} " for i in range(4)]
                for seq, word in enumerate(words):
                    publish(conn, chat, lease, seq, word)
                conn.execute("SELECT chatd.finish_turn(%s, %s, %s)",
                             (chat, lease, Jsonb([{"type": "text", "text": "".join(words)}])))
                async for event in sub:
                    events.append(event)
                    if isinstance(event, StatusEvent) and event.status == "waiting":
                        break
    parts = [e for e in events if isinstance(e, PartsEvent)]
    assert [(p.lease, p.seq) for p in parts] == [(lease, s) for s in range(4)], "every part, in order, once"
    assert "".join(p.text for p in parts) == "".join(words)
    texts = [p.text for p in parts] + [e.message.text for e in events if isinstance(e, MessageEvent)]
    assert not any("FORGED" in t for t in texts)


def test_get_stream_parts_returns_only_chats_the_user_may_read(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    owner, other = factory.user(org), factory.user(org)
    factory.model_config(is_default=True)
    mine, theirs = factory.chat(owner, org=org, text="a"), factory.chat(other, org=org, text="b")
    leases = dict(conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats('w1', 5)").fetchall())
    publish(conn, mine, leases[mine], 0, "mine")
    publish(conn, theirs, leases[theirs], 0, "theirs")
    rows = conn.execute(
        "SELECT chat_id, seq, parts FROM chatd.get_stream_parts(%s, %s, %s, %s)",
        (owner, [mine], [leases[mine]], [-1]),
    ).fetchall()
    assert rows == [(mine, 0, [{"type": "text", "text": "mine"}])]
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM chatd.get_stream_parts(%s, %s, %s, %s)",
                     (owner, [mine, theirs], [leases[mine], leases[theirs]], [-1, -1]))
    assert err.value.sqlstate == "CD002", "one chat of another user refuses the whole call"
