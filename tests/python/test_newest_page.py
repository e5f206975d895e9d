"""History without ever loading it whole (issue 14 item 3): a snapshot of
the newest page with a cursor back (get_chat_snapshot p_newest), a
subscription that starts at the end of a long chat, `chatd watch --newest`,
and the newest page read by an index range scan that does not grow with the
chat."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from chatd.client import Client, MessageEvent
from chatd.testing import Factory, as_role


def long_chat(conn: psycopg.Connection[Any], factory: Factory, n: int) -> tuple[UUID, UUID]:
    """A waiting chat with n user-visible messages (alternating user and
    assistant) after its first one, and a model-only message among them.
    Returns (chat, owner)."""
    owner = factory.user()
    chat = factory.chat(owner)
    conn.execute("SELECT chatd_test.force_status(%s, 'waiting')", (chat,))
    conn.execute(
        "INSERT INTO chatd.messages (chat_id, role, content, visibility) "
        "SELECT %s, CASE WHEN i %% 2 = 0 THEN 'user' ELSE 'assistant' END::chatd.message_role, "
        "jsonb_build_array(jsonb_build_object('type', 'text', 'text', 'message ' || i)), "
        "CASE WHEN i = %s THEN 'model' ELSE 'both' END::chatd.message_visibility "
        "FROM generate_series(1, %s) AS i",
        (chat, n - 3, n),
    )
    return chat, owner


def visible_ids(conn: psycopg.Connection[Any], chat: UUID) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT id FROM chatd.messages WHERE chat_id = %s AND NOT deleted AND visibility <> 'model' ORDER BY id",
        (chat,),
    ).fetchall()]


async def test_a_newest_snapshot_holds_the_last_messages_and_pages_back_to_the_first(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    chat, owner = long_chat(conn, factory, 95)
    every = visible_ids(conn, chat)
    async with await Client.connect(as_role(db, "app")) as client:
        snap = await client.snapshot(owner, chat, newest=20)
        assert [m.id for m in snap.messages] == every[-20:]
        assert snap.before == every[-20]
        seen = [m.id for m in snap.messages]
        before: int | None = snap.before
        while before is not None:
            page = await client.messages_before(owner, chat, before, limit=20)
            seen = [m.id for m in page.messages] + seen
            before = page.before
    assert seen == every, "the newest page and the pages back hold every visible message once, in order"


async def test_a_newest_snapshot_of_a_short_chat_has_no_cursor(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    chat, owner = long_chat(conn, factory, 5)
    async with await Client.connect(as_role(db, "app")) as client:
        snap = await client.snapshot(owner, chat, newest=50)
    assert [m.id for m in snap.messages] == visible_ids(conn, chat)
    assert snap.before is None


async def test_a_subscription_with_newest_starts_at_the_end_and_follows_live(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    chat, owner = long_chat(conn, factory, 300)
    every = visible_ids(conn, chat)
    emitted: list[int] = []
    async with await Client.connect(as_role(db, "app")) as client, \
            client.subscribe(owner, chat, newest=10) as sub:
        async for event in sub:
            if isinstance(event, MessageEvent):
                emitted.append(event.message.id)
                if len(emitted) == 10:
                    assert sub.before == every[-10]
                    conn.execute("SELECT chatd.send_message(%s, %s, %s)", (owner, chat, Jsonb("one more")))
                if len(emitted) == 11:
                    break
    assert emitted[:10] == every[-10:], "only the newest page, not the history"
    assert emitted[10] > every[-1], "then the live message"


def test_the_newest_page_reads_only_its_own_rows_at_any_chat_size(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    chat, _owner = long_chat(conn, factory, 20000)
    conn.execute("ANALYZE chatd.messages")
    counters = (
        "SELECT seq_tup_read, idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relid = 'chatd.messages'::regclass"
    )
    with conn.transaction():
        # the difference across the call: the view also holds this session's
        # counts not yet flushed (the load's deferred triggers ran at its commit)
        before = conn.execute(counters).fetchone()
        rows = conn.execute("SELECT id FROM chatd._newest_page(%s, 0, 50, 4194304)", (chat,)).fetchall()
        after = conn.execute(counters).fetchone()
    assert len(rows) == 50
    assert before is not None and after is not None
    seq, fetched = after[0] - before[0], after[1] - before[1]
    assert seq == 0, "no sequential scan of the messages"
    assert fetched <= 51, (
        f"the newest page of a 20,000-message chat fetched {fetched} rows: its 50 (and the model-only one "
        "it skips), not the history"
    )


def test_chatd_watch_newest_prints_only_the_newest_messages(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    chat, owner = long_chat(conn, factory, 40)
    every = visible_ids(conn, chat)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatd", "watch", str(chat), "--newest", "3", "--json", "--exit-when-idle",
         "--database-url", db, "--user", str(owner)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    ids = [e["id"] for e in map(json.loads, out.splitlines()) if e["event"] == "message"]
    assert ids == every[-3:]
