"""chatd.client against a real database: calls, typed errors, and the
subscribe protocol (LISTEN, snapshot, apply newer; reconnects; one listener).

Turns are driven through the worker SQL functions from the test
(acquire_chats, publish_parts, finish_turn), so every step is deterministic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from chatd import client as cl
from chatd.client import (
    ChatArchived,
    ChatDeletedEvent,
    ChatNotFound,
    Client,
    ErrorEvent,
    Event,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    MessageEvent,
    MessagesDeletedEvent,
    PartsEvent,
    QueueEvent,
    QueueFull,
    RetryEvent,
    StatusEvent,
    Subscription,
    UsageLimitExceeded,
)
from chatd.listener import Listener
from chatd.testing import Factory

WAIT = 15.0


@dataclass
class Setup:
    org: uuid.UUID
    user: uuid.UUID
    model: uuid.UUID


@pytest.fixture
def setup(factory: Factory) -> Setup:
    org = factory.org()
    user = factory.user(org)
    model = factory.model_config(is_default=True)
    return Setup(org, user, model)


@pytest.fixture
async def client(db: str) -> AsyncIterator[Client]:
    app = f"chatd-test-{uuid.uuid4().hex[:8]}"
    async with await Client.connect(db, application_name=app, max_size=4) as c:
        yield c


# ---------------------------------------------------------------- worker steps (SQL)


def acquire(conn: psycopg.Connection[Any], worker: str = "w1") -> dict[uuid.UUID, int]:
    rows = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats(%s, 1000)", (worker,)).fetchall()
    return {r[0]: r[1] for r in rows}


def publish(conn: psycopg.Connection[Any], chat: uuid.UUID, lease: int, seq: int, text: str) -> None:
    conn.execute(
        "SELECT chatd.publish_parts(%s, %s, %s, %s)",
        (chat, lease, seq, Jsonb([{"type": "text", "text": text}])),
    )


def finish(conn: psycopg.Connection[Any], chat: uuid.UUID, lease: int, text: str) -> int:
    row = conn.execute(
        "SELECT chatd.finish_turn(%s, %s, %s, %s)",
        (chat, lease, Jsonb([{"type": "text", "text": text}]),
         Jsonb({"input_tokens": 10, "output_tokens": 5})),
    ).fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------- event helpers


async def take(sub: Subscription, n: int) -> list[Event]:
    async with asyncio.timeout(WAIT):
        return [await anext(sub) for _ in range(n)]


async def until(sub: Subscription, done: Callable[[Event], bool]) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(WAIT):
        async for event in sub:
            events.append(event)
            if done(event):
                return events
    raise AssertionError(f"subscription ended early: {events}")


def is_status(status: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, StatusEvent) and e.status == status


def parts_seqs(events: list[Event]) -> list[tuple[int, int]]:
    return [(e.lease, e.seq) for e in events if isinstance(e, PartsEvent)]


def statuses(events: list[Event]) -> list[str]:
    return [e.status for e in events if isinstance(e, StatusEvent)]


async def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- calls


async def test_calls_round_trip(client: Client, setup: Setup) -> None:
    chat = await client.create_chat(setup.user, setup.org, "hello", title="first")
    snap = await client.snapshot(setup.user, chat)
    assert snap.chat.id == chat and snap.chat.status == "pending" and snap.chat.title == "first"
    assert [m.text for m in snap.messages] == ["hello"]

    sent = await client.send_message(setup.user, chat, [{"type": "text", "text": "more"}])
    assert sent["queued"] is True
    assert [q.content[0]["text"] for q in (await client.snapshot(setup.user, chat)).queue] == ["more"]

    assert await client.interrupt(setup.user, chat) in ("waiting", "pending")
    chats = await client.list_chats(setup.user, setup.org)
    assert [c.id for c in chats] == [chat]

    await client.archive(setup.user, chat)
    assert await client.list_chats(setup.user) == []
    assert [c.archived for c in await client.list_chats(setup.user, include_archived=True)] == [True]
    await client.unarchive(setup.user, chat)
    assert [c.id for c in await client.list_chats(setup.user)] == [chat]

    first = snap.messages[0].id
    new_id = await client.edit_message(setup.user, chat, first, "hello again")
    snap = await client.snapshot(setup.user, chat)
    assert [m.text for m in snap.messages] == ["hello again"] and snap.messages[0].id == new_id
    assert snap.queue == []


async def test_list_chats_pages_through_chats_sharing_an_updated_at(client: Client, setup: Setup) -> None:
    root = await client.create_chat(setup.user, setup.org, "root")
    children = [
        await client.create_chat(setup.user, setup.org, f"child {i}", parent_chat_id=root) for i in range(3)
    ]
    await client.archive(setup.user, root)  # one UPDATE: the whole tree shares one updated_at
    seen: list[Any] = []
    before, before_id = None, None
    while page := await client.list_chats(
        setup.user, include_archived=True, limit=1, before=before, before_id=before_id
    ):
        seen += [c.id for c in page]
        before, before_id = page[-1].updated_at, page[-1].id
    assert sorted(seen) == sorted([root, *children])


async def test_messages_before_pages_back_from_the_newest_message(
    client: Client, setup: Setup, factory: Factory
) -> None:
    chat = await client.create_chat(setup.user, setup.org, "m0")
    for i in range(1, 7):
        factory.message(chat, text=f"m{i}")
    pages = []
    page = await client.messages_before(setup.user, chat, limit=3)
    pages.append([m.text for m in page.messages])
    while page.more:
        page = await client.messages_before(setup.user, chat, page.before, limit=3)
        pages.append([m.text for m in page.messages])
    assert pages == [["m4", "m5", "m6"], ["m1", "m2", "m3"], ["m0"]]
    assert page.before is None
    with pytest.raises(ChatNotFound):
        await client.messages_before(setup.user, uuid.uuid4())
    with pytest.raises(InvalidInput):
        await client.messages_before(setup.user, chat, limit=0)


async def test_typed_errors(client: Client, setup: Setup, factory: Factory,
                            conn: psycopg.Connection[Any]) -> None:
    chat = await client.create_chat(setup.user, setup.org, "hi")
    stranger = factory.user(setup.org)

    with pytest.raises(ChatNotFound) as not_found:
        await client.snapshot(setup.user, uuid.uuid4())
    assert not_found.value.sqlstate == "CD001"
    with pytest.raises(Forbidden):
        await client.send_message(stranger, chat, "mine now")
    with pytest.raises(InvalidInput):
        await client.send_message(setup.user, chat, "")
    with pytest.raises(LeaseLost):
        await client.fetch("SELECT chatd.publish_parts(%s, 999, 0, '[]')", [chat])

    for i in range(20):  # pending: every send is queued, up to the limit
        await client.send_message(setup.user, chat, f"q{i}")
    with pytest.raises(QueueFull):
        await client.send_message(setup.user, chat, "one too many")

    await client.interrupt(setup.user, chat)  # -> pending (queue head promoted)
    lease = acquire(conn)[chat]
    with pytest.raises(InvalidTransition):
        # a lease never goes back (running -> requires_action became a
        # valid transition with issue 13)
        await client.fetch("UPDATE chatd.chats SET lease = lease - 1 WHERE id = %s", [chat])
    finish(conn, chat, lease, "ok")

    await client.archive(setup.user, chat)
    with pytest.raises(ChatArchived):
        await client.send_message(setup.user, chat, "archived?")

    with pytest.raises(InvalidInput):
        await client.create_chat(setup.user, setup.org, "x", model_config_id=uuid.uuid4())


async def test_usage_limit_detail(client: Client, setup: Setup, conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT chatd.admin_set_usage_limits(p_enabled => TRUE, p_default_limit_micros => 0)")
    with pytest.raises(UsageLimitExceeded) as exc:
        await client.create_chat(setup.user, setup.org, "hi")
    err = exc.value
    assert err.sqlstate == "CD006"
    assert err.spent_micros == 0 and err.limit_micros == 0
    assert err.resets_at is not None and err.resets_at.tzinfo is not None
    assert isinstance(err, cl.ChatdError)


def test_error_mapping_without_database() -> None:
    err = cl.UsageLimitExceeded("x", detail='{"kind":"usage_limit","spent_micros":7,'
                                            '"limit_micros":5,"resets_at":"2030-01-01T00:00:00Z"}')
    assert (err.spent_micros, err.limit_micros, err.resets_at.isoformat() if err.resets_at else None) == (
        7, 5, "2030-01-01T00:00:00+00:00")
    garbled = cl.UsageLimitExceeded("x", detail="not json")
    assert garbled.spent_micros is None and garbled.resets_at is None


# ---------------------------------------------------------------- subscribe


async def test_subscribe_while_a_turn_streams(client: Client, setup: Setup,
                                              conn: psycopg.Connection[Any]) -> None:
    chat = await client.create_chat(setup.user, setup.org, "hello")
    async with client.subscribe(setup.user, chat) as sub:
        first = await take(sub, 2)
        assert isinstance(first[0], MessageEvent) and first[0].message.text == "hello"
        assert isinstance(first[1], StatusEvent) and first[1].status == "pending"

        lease = acquire(conn)[chat]
        assert statuses(await take(sub, 1)) == ["running"]
        words = [f"w{i} " for i in range(10)]
        for seq, word in enumerate(words):
            publish(conn, chat, lease, seq, word)
        message_id = finish(conn, chat, lease, "".join(words))
        events = await until(sub, is_status("waiting"))

    assert parts_seqs(events) == [(lease, s) for s in range(10)]
    assert "".join(e.text for e in events if isinstance(e, PartsEvent)) == "".join(words)
    messages = [e.message for e in events if isinstance(e, MessageEvent)]
    assert [(m.id, m.role, m.text) for m in messages] == [(message_id, "assistant", "".join(words))]
    # the final message comes after every part
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("MessageEvent") > max(i for i, k in enumerate(kinds) if k == "PartsEvent")
    assert messages[0].output_tokens == 5 and messages[0].total_cost_micros is not None


async def test_subscribe_mid_turn_replays_parts(client: Client, setup: Setup,
                                                conn: psycopg.Connection[Any]) -> None:
    chat = await client.create_chat(setup.user, setup.org, "hello")
    lease = acquire(conn)[chat]
    for seq in range(3):
        publish(conn, chat, lease, seq, f"p{seq}")
    async with client.subscribe(setup.user, chat) as sub:
        initial = await take(sub, 5)
        assert isinstance(initial[0], MessageEvent)
        assert statuses(initial) == ["running"]
        assert parts_seqs(initial) == [(lease, 0), (lease, 1), (lease, 2)]
        publish(conn, chat, lease, 3, "p3")
        publish(conn, chat, lease, 4, "p4")
        finish(conn, chat, lease, "p0p1p2p3p4")
        events = await until(sub, is_status("waiting"))
    assert parts_seqs(events) == [(lease, 3), (lease, 4)]
    assert [e.message.text for e in events if isinstance(e, MessageEvent)] == ["p0p1p2p3p4"]


async def test_change_between_listen_and_snapshot_is_seen_once(
    client: Client, setup: Setup, conn: psycopg.Connection[Any]
) -> None:
    chat = await client.create_chat(setup.user, setup.org, "hello")
    leases: dict[uuid.UUID, int] = {}

    async def claim_now(chat_id: uuid.UUID) -> None:
        # LISTEN is armed, the snapshot not read yet: commit a status change
        leases.update(acquire(conn))

    client.after_listen = claim_now
    async with client.subscribe(setup.user, chat) as sub:
        initial = await take(sub, 2)
        # the notification of the claim is queued behind the snapshot, and
        # its version is not newer: it must not produce a second "running"
        finish(conn, chat, leases[chat], "done")
        events = initial + await until(sub, is_status("waiting"))
    assert leases, "the hook did not run"
    assert statuses(events) == ["running", "waiting"]
    assert [e.message.role for e in events if isinstance(e, MessageEvent)] == ["user", "assistant"]


async def test_after_message_id_and_edits(client: Client, setup: Setup,
                                          conn: psycopg.Connection[Any]) -> None:
    chat = await client.create_chat(setup.user, setup.org, "one")
    lease = acquire(conn)[chat]
    answer = finish(conn, chat, lease, "two")
    async with client.subscribe(setup.user, chat, after_message_id=answer) as sub:
        assert statuses(await take(sub, 1)) == ["waiting"]
        await client.send_message(setup.user, chat, "three")
        events = await until(sub, is_status("pending"))
        assert [e.message.text for e in events if isinstance(e, MessageEvent)] == ["three"]

        three = events[0].message.id  # type: ignore[union-attr]

    async with client.subscribe(setup.user, chat) as sub:
        initial = await until(sub, lambda e: isinstance(e, StatusEvent))
        ids = [e.message.id for e in initial if isinstance(e, MessageEvent)]
        assert ids == [ids[0], answer, three]
        await client.edit_message(setup.user, chat, ids[0], "one, edited")
        events = await until(sub, lambda e: isinstance(e, MessageEvent))
        deleted = events[0]
        assert isinstance(deleted, MessagesDeletedEvent)
        assert (deleted.from_message_id, deleted.message_ids) == (ids[0], ids)
        assert events[-1].message.text == "one, edited"  # type: ignore[union-attr]
        assert [type(e) for e in events].count(MessagesDeletedEvent) == 1


async def test_an_edit_hint_after_the_status_hint_of_its_version_still_shows_the_deletion(
    client: Client, setup: Setup, conn: psycopg.Connection[Any]
) -> None:
    """The message hints of a transaction are sent at its commit, after the
    status hint of the same version, and the hub may hand them over apart:
    an edit's hint must still make the subscription re-read everything."""
    chat = await client.create_chat(setup.user, setup.org, "one")
    answer = finish(conn, chat, acquire(conn)[chat], "two")
    async with client.subscribe(setup.user, chat) as sub:
        initial = await until(sub, lambda e: isinstance(e, StatusEvent))
        ids = [e.message.id for e in initial if isinstance(e, MessageEvent)]
        assert ids == [ids[0], answer]
        # the edit with its status hint only (its message hints held back)
        conn.execute("ALTER TABLE chatd.messages DISABLE TRIGGER messages_notify")
        try:
            await client.edit_message(setup.user, chat, ids[0], "one, edited")
        finally:
            conn.execute("ALTER TABLE chatd.messages ENABLE TRIGGER messages_notify")
        events = await until(sub, is_status("pending"))
        assert not any(isinstance(e, MessagesDeletedEvent) for e in events)
        status = events[-1]
        assert isinstance(status, StatusEvent)
        # ... then the edit's own hint, of the version already read
        sub._queue.put_nowait({
            "kind": "message", "op": "update", "chat_id": str(chat), "version": status.version,
            "status": "pending",
        })
        events = await until(sub, lambda e: isinstance(e, MessagesDeletedEvent))
    deleted = events[-1]
    assert isinstance(deleted, MessagesDeletedEvent)
    assert deleted.message_ids == ids


async def test_delete_chat_ends_the_subscription_with_a_chat_deleted_event(
    client: Client, setup: Setup, conn: psycopg.Connection[Any]
) -> None:
    chat = await client.create_chat(setup.user, setup.org, "hello")
    child = await client.create_chat(setup.user, setup.org, "sub", parent_chat_id=chat)
    lease = acquire(conn)[chat]
    publish(conn, chat, lease, 0, "par")
    async with client.subscribe(setup.user, chat) as sub:
        await until(sub, lambda e: isinstance(e, PartsEvent))
        assert await client.delete_chat(setup.user, chat) == 2
        events = await until(sub, lambda e: isinstance(e, ChatDeletedEvent))
        assert [type(e) for e in events] == [ChatDeletedEvent], "nothing of the wiped chat is emitted"
        with pytest.raises(StopAsyncIteration):
            async with asyncio.timeout(WAIT):
                await anext(sub)
    for call in (
        client.snapshot(setup.user, chat),
        client.send_message(setup.user, child, "more"),
        client.delete_chat(setup.user, chat),
    ):
        with pytest.raises(ChatNotFound):
            await call
    assert await client.list_chats(setup.user, include_archived=True) == []


async def test_a_forged_deleted_notification_does_not_end_the_subscription(
    client: Client, setup: Setup, conn: psycopg.Connection[Any]
) -> None:
    # any login can NOTIFY on a chat's channel: "deleted" is a hint to
    # re-read like any other, and the chat is still there
    chat = await client.create_chat(setup.user, setup.org, "hello")
    async with client.subscribe(setup.user, chat) as sub:
        assert statuses(await until(sub, is_status("pending"))) == ["pending"]
        conn.execute(
            "SELECT pg_notify(%s, %s)",
            (f"chatd_chat_{chat}", f'{{"kind": "deleted", "chat_id": "{chat}", "version": 99}}'),
        )
        acquire(conn)
        events = await until(sub, is_status("running"))
        assert not [e for e in events if isinstance(e, ChatDeletedEvent)]


async def test_queue_retry_and_error_events(client: Client, setup: Setup,
                                            conn: psycopg.Connection[Any]) -> None:
    chat = await client.create_chat(setup.user, setup.org, "hello")
    lease = acquire(conn)[chat]
    async with client.subscribe(setup.user, chat) as sub:
        await take(sub, 2)
        await client.send_message(setup.user, chat, "later")
        queued = await until(sub, lambda e: isinstance(e, QueueEvent))
        assert [q.content[0]["text"] for q in queued[-1].queue] == ["later"]  # type: ignore[union-attr]

        error = {"message": "overloaded", "kind": "overloaded", "provider": "p", "retryable": True}
        conn.execute("SELECT chatd.record_failure(%s, %s, %s)", (chat, lease, Jsonb(error)))
        retry = await until(sub, lambda e: isinstance(e, RetryEvent))
        event = retry[-1]
        assert isinstance(event, RetryEvent) and event.attempt == 1
        assert event.error is not None and event.error.kind == "overloaded"


    other = await client.create_chat(setup.user, setup.org, "hello")
    lease = acquire(conn)[other]  # the first chat's retry is not due yet
    async with client.subscribe(setup.user, other) as sub:
        await take(sub, 2)
        fatal = {"message": "bad key", "kind": "auth", "provider": "p", "retryable": False}
        conn.execute("SELECT chatd.record_failure(%s, %s, %s)", (other, lease, Jsonb(fatal)))
        failed = await until(sub, lambda e: isinstance(e, ErrorEvent))
        assert failed[-1].error is not None and failed[-1].error.kind == "auth"  # type: ignore[union-attr]
        assert statuses(failed) == ["error"]


async def test_200_subscriptions_share_one_listener(
    client: Client, setup: Setup, conn: psycopg.Connection[Any]
) -> None:
    chats = [await client.create_chat(setup.user, setup.org, f"chat {i}") for i in range(200)]
    subs = [client.subscribe(setup.user, chat) for chat in chats]
    try:
        firsts = await asyncio.gather(*(take(sub, 2) for sub in subs))
        assert all(statuses(f) == ["pending"] for f in firsts)
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE %s GROUP BY 1",
            (client.application_name + "%",),
        ).fetchall()
        counts = dict(rows)
        assert counts[f"{client.application_name} listener"] == 1
        assert counts.get(client.application_name, 0) <= 4  # the pool's max_size

        leases = acquire(conn)
        assert set(leases) == set(chats)
        running = await asyncio.gather(*(take(sub, 1) for sub in subs))
        assert all(statuses(r) == ["running"] for r in running)
    finally:
        for sub in subs:
            await sub.aclose()


async def test_reconnect_mid_stream_without_duplicates(
    client: Client, setup: Setup, conn: psycopg.Connection[Any]
) -> None:
    chat = await client.create_chat(setup.user, setup.org, "hello")
    async with client.subscribe(setup.user, chat) as sub:
        events = await take(sub, 2)
        lease = acquire(conn)[chat]
        publish(conn, chat, lease, 0, "a")
        publish(conn, chat, lease, 1, "b")
        events += await until(sub, lambda e: isinstance(e, PartsEvent) and e.seq == 1)

        old_pid = client.listener_pid
        assert old_pid is not None
        conn.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
        # written while the listener is (probably) deaf: only the re-snapshot
        # after the reconnect can deliver these
        publish(conn, chat, lease, 2, "c")
        publish(conn, chat, lease, 3, "d")
        events += await until(sub, lambda e: isinstance(e, PartsEvent) and e.seq == 3)
        await eventually(lambda: client.listener_pid not in (None, old_pid), "a new listener")

        publish(conn, chat, lease, 4, "e")
        finish(conn, chat, lease, "abcde")
        events += await until(sub, is_status("waiting"))

    assert parts_seqs(events) == [(lease, s) for s in range(5)]
    assert [e.message.text for e in events if isinstance(e, MessageEvent)] == ["hello", "abcde"]
    assert statuses(events) == ["pending", "running", "waiting"]


async def test_notifications_arriving_while_a_channel_change_waits_are_all_delivered(db: str) -> None:
    """One transaction's notifications arrive in one packet. A channel
    change (a subscription closing, another opening) that waits while the
    listener is in notifies() must not cut that packet short: the listener
    applies the change after the whole packet was handed on."""
    got: list[str] = []
    armed = asyncio.Event()

    async def on_listening(channels: frozenset[str], _generation: int) -> None:
        if {"chan_a", "chan_b"} <= channels:
            armed.set()

    listener = Listener(db, application_name="chatd-test listener", on_notify=lambda c, _p: got.append(c),
                        on_listening=on_listening, poll_interval=30.0)
    listener.listen("chan_a")
    listener.listen("chan_b")
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(WAIT):
            await armed.wait()
        # the change is pending while the listener waits for notifications
        listener.listen("chan_c")
        async with await psycopg.AsyncConnection.connect(db) as notifier:  # one transaction
            await notifier.execute("NOTIFY chan_a, '1'")
            await notifier.execute("NOTIFY chan_b, '2'")
        await eventually(lambda: len(got) >= 2, "both notifications")
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as notifier:
            await notifier.execute("NOTIFY chan_c, '3'")  # the change was applied too
        await eventually(lambda: "chan_c" in got, "the newly listened channel")
    finally:
        listener.stop()
        task.cancel()  # it waits up to poll_interval for notifications
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert got == ["chan_a", "chan_b", "chan_c"]


async def test_a_failed_refresh_does_not_end_the_subscription(
    client: Client, setup: Setup, conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    chat = await client.create_chat(setup.user, setup.org, "hello")
    real = client.snapshot
    failures = 0

    async def flaky(*args: Any, **kwargs: Any) -> cl.Snapshot:
        nonlocal failures
        if failing:
            failures += 1
            raise psycopg.OperationalError("database blip")
        return await real(*args, **kwargs)

    failing = False
    monkeypatch.setattr(client, "snapshot", flaky)
    async with client.subscribe(setup.user, chat) as sub:
        await take(sub, 2)
        failing = True
        collector = asyncio.create_task(until(sub, is_status("waiting")))
        lease = acquire(conn)[chat]  # its hint's refresh fails
        await eventually(lambda: failures >= 1, "a failed refresh")
        failing = False
        finish(conn, chat, lease, "done")  # the next hint catches up
        events = await collector
    assert sub.refresh_failures >= 1
    assert [e.message.text for e in events if isinstance(e, MessageEvent)] == ["done"]


async def test_snapshot_call_has_a_default_timeout(db: str, setup: Setup,
                                                   conn: psycopg.Connection[Any]) -> None:
    async with await Client.connect(db, timeout=0.5) as c:
        chat = await c.create_chat(setup.user, setup.org, "hi")
        # hold the chat row lock so that an UPDATE-ing call blocks
        with psycopg.connect(db) as blocker:
            blocker.execute("SELECT 1 FROM chatd.chats WHERE id = %s FOR UPDATE", (chat,))
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await c.interrupt(setup.user, chat)
            assert time.monotonic() - started < 3


async def test_a_subscription_whose_first_read_times_out_waits_and_then_reads(
    db: str, setup: Setup
) -> None:
    async with await Client.connect(db, timeout=0.5) as c:
        chat = await c.create_chat(setup.user, setup.org, "hello")
        # a second connection holds the messages table: the first snapshot
        # blocks past the client's timeout (a database at the wrong moment)
        with psycopg.connect(db) as blocker:
            blocker.execute("LOCK TABLE chatd.messages IN ACCESS EXCLUSIVE MODE")
            async with c.subscribe(setup.user, chat) as sub:
                first = asyncio.create_task(take(sub, 1))
                await eventually(lambda: sub.refresh_failures >= 1, "a first read that timed out")
                blocker.rollback()
                events = await first
    assert [e.message.text for e in events if isinstance(e, MessageEvent)] == ["hello"]
