"""A chat's size never fails another chat (issue 10, item 2): acquire_chats
returns a bounded first page of each history, the worker pages the rest
through the fenced turn_history, get_chat_snapshot is paged, and a history
too big to load fails its own chat, for good, and no other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from worker_support import chat_row, messages, running_worker, status_is, wait_until, worker_config

from chatd.client import Client
from chatd.testing import Factory
from chatd.testing.fakellm import FakeLLM, Text
from chatd.worker import worker as worker_module

MB = 1_000_000


def add_big_messages(conn: psycopg.Connection[Any], chat: UUID, count: int, size: int) -> None:
    """Inserts, as chatd's owner, `count` user messages of `size` characters
    each (compressible: cheap to store, full size when read)."""
    conn.execute("SET default_toast_compression = lz4")  # ten times faster than pglz here
    conn.execute(
        "INSERT INTO chatd.messages (chat_id, role, content) "
        "SELECT %s, 'user', jsonb_build_array(jsonb_build_object("
        "'type', 'text', 'text', i::text || repeat('x', %s))) FROM generate_series(1, %s) AS i",
        (chat, size, count),
    )


def wide_window(conn: psycopg.Connection[Any], model: UUID) -> None:
    """A model whose context window (10M tokens, about 40 MB) holds these
    histories whole: what is paged here is the window itself."""
    conn.execute("UPDATE chatd.model_configs SET context_limit = 10000000 WHERE id = %s", (model,))


def make_oldest(conn: psycopg.Connection[Any], chat: UUID) -> None:
    conn.execute("UPDATE chatd.chats SET next_attempt_at = now() - interval '1 hour' WHERE id = %s", (chat,))


def test_a_chat_over_the_jsonb_limit_does_not_fail_another_chats_claim(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    owner = factory.user(org)
    factory.model_config(is_default=True)
    big = factory.chat(owner, org=org, text="big")
    small = factory.chat(owner, org=org, text="small")
    # 270 messages of 1 MB: more than jsonb's 256 MB in one aggregate
    add_big_messages(conn, big, 270, MB)
    make_oldest(conn, big)

    rows = conn.execute(
        "SELECT chat_id, lease, messages, history_complete, pg_column_size(messages), context "
        "FROM chatd.acquire_chats('w1', 10)"
    ).fetchall()

    claimed = {r[0]: r for r in rows}
    assert [r[0] for r in rows] == [big, small], "both claimed, the big (oldest due) first"
    _, lease, page, complete, size, context = claimed[big]
    # the model's window (128k tokens) holds only the newest message of this
    # history; the claim says it must be compacted (docs/context.md)
    assert complete is True and len(page) == 1 and context["compact"] is True
    assert size < 8 * MB, "the first page is bounded"
    assert claimed[small][3] is True
    assert [m["content"][0]["text"] for m in claimed[small][2]] == ["small"]

    # a reader of the whole history (turn_history) goes page by page, each
    # bounded, none failing
    after, pages = 0, 0
    while pages < 3:
        history = conn.execute(
            "SELECT id, bytes FROM chatd.turn_history('w1', %s, %s, %s, 1000)", (big, lease, after)
        ).fetchall()
        assert history and sum(b for _, b in history) <= 8_388_608 + MB
        after, pages = history[-1][0], pages + 1


def test_turn_history_is_fenced_by_worker_and_lease(conn: psycopg.Connection[Any], factory: Factory) -> None:
    org = factory.org()
    owner = factory.user(org)
    factory.model_config(is_default=True)
    chat = factory.chat(owner, org=org, text="hello")
    [(lease,)] = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 1)").fetchall()
    rows = conn.execute("SELECT id, role::text FROM chatd.turn_history('w1', %s, %s, 0)", (chat, lease)).fetchall()
    assert [r[1] for r in rows] == ["user"]
    for worker, bad_lease in (("w2", lease), ("w1", lease + 1)):
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT * FROM chatd.turn_history(%s, %s, %s, 0)", (worker, chat, bad_lease))
        assert err.value.sqlstate == "CD004"
    with pytest.raises(psycopg.Error) as err:
        conn.execute("SELECT * FROM chatd.turn_history('w1', %s, %s, 0, 0)", (chat, lease))
    assert err.value.sqlstate == "CD007"


async def test_get_chat_snapshot_is_paged_and_the_client_reads_every_page(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    owner = factory.user(org)
    factory.model_config(is_default=True)
    chat = factory.chat(owner, org=org, text="hello")
    add_big_messages(conn, chat, 5, MB)
    first = conn.execute("SELECT chatd.get_chat_snapshot(%s, %s, 0)", (owner, chat)).fetchone()[0]
    assert first["messages_more"] is True
    assert 1 <= len(first["messages"]) < 6, "about 4 MB of content per page"
    small = conn.execute("SELECT chatd.get_chat_snapshot(%s, %s, 0, 2)", (owner, chat)).fetchone()[0]
    assert len(small["messages"]) == 2 and small["messages_more"] is True

    async with await Client.connect(db, max_size=2) as client:
        snapshot = await client.snapshot(owner, chat)
    ids = [m.id for m in snapshot.messages]
    assert len(ids) == 6 and ids == sorted(ids)


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


async def test_a_history_over_the_worker_limit_fails_that_chat_for_good_and_no_other(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "MAX_HISTORY_BYTES", 5 * MB)
    org = factory.org()
    owner = factory.user(org)
    provider = factory.provider(kind="openai-compat", base_url=fake.openai_base_url, api_key_env=None)
    model = factory.model_config(provider=provider, is_default=True)
    wide_window(conn, model)
    big = factory.chat(owner, org=org, model=model, text="big")
    add_big_messages(conn, big, 6, MB)  # the first page holds about 4 of them
    make_oldest(conn, big)
    small = factory.chat(owner, org=org, model=model, text="small")
    fake.script(Text("fine"))

    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, big, "error"), what="the big chat to fail")
        await wait_until(lambda: status_is(db, small, "waiting"), what="the small chat to finish")

    error = (await chat_row(db, big))["last_error"]
    assert error["kind"] == "config" and error["retryable"] is False
    assert "limit" in error["message"]
    assert [m["role"] for m in await messages(db, small)] == ["user", "assistant"]


async def test_the_worker_reads_a_long_history_page_by_page(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    org = factory.org()
    owner = factory.user(org)
    provider = factory.provider(kind="openai-compat", base_url=fake.openai_base_url, api_key_env=None)
    model = factory.model_config(provider=provider, is_default=True)
    wide_window(conn, model)
    chat = factory.chat(owner, org=org, model=model, text="first")
    add_big_messages(conn, chat, 6, 900_000)
    fake.script(Text("read it all"))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the turn to finish")
    sent = fake.requests[-1].messages
    assert len(sent) == 7, "the whole history, not only the first page"
