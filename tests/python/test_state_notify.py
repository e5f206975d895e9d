"""The exact notifications each state-machine function emits, captured with
LISTEN on a real connection (delivered at commit). A sentinel notification
sent after each call marks the end of what that call produced."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from chatd.testing import Factory


class Capture:
    def __init__(self, db: str) -> None:
        self.listener = psycopg.connect(db, autocommit=True)
        self.sender = psycopg.connect(db, autocommit=True)
        self.listener.execute("LISTEN chatd_wake")
        self.listener.execute("LISTEN chatd_test_sentinel")

    def listen(self, channel: str) -> None:
        self.listener.execute(f'LISTEN "{channel}"')

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        token = uuid.uuid4().hex
        self.sender.execute("SELECT pg_notify('chatd_test_sentinel', %s)", (token,))
        got: list[tuple[str, dict[str, Any]]] = []
        for n in self.listener.notifies(timeout=10):
            if n.channel == "chatd_test_sentinel":
                if n.payload == token:
                    return got
                continue
            got.append((n.channel.split("_")[1], json.loads(n.payload)))
        raise AssertionError("sentinel never arrived")

    def close(self) -> None:
        self.listener.close()
        self.sender.close()


def kinds(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(channel, payload.get("kind", "wake")) for channel, payload in events]


def test_each_function_emits_exactly_its_notifications(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    user = factory.user(org)
    factory.model_config(is_default=True)
    cap = Capture(db)
    try:
        cap.listen(f"chatd_user_{user}")
        chat = conn.execute("SELECT chatd.create_chat(%s, %s, '\"hi\"')", (user, org)).fetchone()[0]
        events = cap.drain()
        assert kinds(events) == [("user", "created"), ("wake", "wake")]
        assert events[0][1]["version"] == 1 and events[0][1]["status"] == "pending"
        cap.listen(f"chatd_chat_{chat}")

        lease = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 5)").fetchone()[0]
        events = cap.drain()
        assert kinds(events) == [("chat", "status"), ("user", "status")]
        assert events[0][1]["status"] == "running" and events[0][1]["worker_id"] == "w1"
        assert events[0][1]["version"] == 2

        conn.execute("SELECT chatd.heartbeat('w1', %s, %s)", ([chat], [lease]))
        assert cap.drain() == [], "heartbeats notify nothing"

        conn.execute("SELECT chatd.publish_parts(%s, %s, 0, '[{\"type\": \"text\", \"text\": \"He\"}]')", (chat, lease))
        events = cap.drain()
        assert kinds(events) == [("chat", "parts")]
        # a hint, never the parts: any login can LISTEN on this channel
        assert events[0][1] == {"kind": "parts", "chat_id": str(chat), "lease": lease, "seq": 0}
        big = json.dumps([{"type": "text", "text": "x" * 9000}])
        conn.execute("SELECT chatd.publish_parts(%s, %s, 1, %s)", (chat, lease, big))
        events = cap.drain()
        assert events[0][1] == {"kind": "parts", "chat_id": str(chat), "lease": lease, "seq": 1}

        conn.execute("SELECT chatd.send_message(%s, %s, '\"more\"')", (user, chat))
        events = cap.drain()
        assert kinds(events) == [("chat", "queue")]
        assert events[0][1]["queue_length"] == 1 and events[0][1]["version"] == 3

        msg = conn.execute("SELECT chatd.finish_turn(%s, %s, '\"reply\"')", (chat, lease)).fetchone()[0]
        events = cap.drain()
        # the queue change, then the status (running -> pending, queue head
        # promoted; written after the messages, so it names the promoted
        # message, and no message hint repeats it)
        assert kinds(events) == [("chat", "queue"), ("chat", "status"), ("user", "status"), ("wake", "wake")]
        assert [p["version"] for c, p in events if c == "chat"] == [4, 5]
        assert events[1][1]["last_message_id"] == msg + 1 and events[1][1]["status"] == "pending"

        lease = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 5)").fetchone()[0]
        cap.drain()
        conn.execute(
            "SELECT * FROM chatd.record_failure(%s, %s, %s, 2500)",
            (chat, lease, json.dumps({"message": "slow down", "kind": "rate_limit", "retryable": True})),
        )
        events = cap.drain()
        assert kinds(events) == [("chat", "retry"), ("user", "status"), ("wake", "wake")]
        retry = events[0][1]
        assert retry["attempt"] == 1 and retry["delay_ms"] == 2500
        assert retry["error"]["kind"] == "rate_limit" and retry["retrying_at"]

        conn.execute("SELECT chatd.archive_chat(%s, %s)", (user, chat))
        events = cap.drain()
        assert kinds(events) == [("chat", "archived"), ("user", "archived")]
        assert events[0][1]["status"] == "waiting" and events[0][1]["archived"] is True

        conn.execute("SELECT chatd.set_chat_title(%s, %s, 'Named')", (user, chat))
        assert kinds(cap.drain()) == [("chat", "title"), ("user", "title")]

        conn.execute("SELECT chatd.unarchive_chat(%s, %s)", (user, chat))
        conn.execute("SELECT chatd.edit_message(%s, %s, %s, '\"edited\"')", (user, chat, msg + 1))
        events = cap.drain()
        # the status (written after the messages) names the new message; the
        # soft deletes send their message hint at commit, same version
        assert kinds(events) == [
            ("chat", "archived"), ("user", "archived"),
            ("chat", "status"), ("user", "status"), ("wake", "wake"),
            ("chat", "message"),
        ]
        assert events[5][1]["op"] == "update"
        assert events[2][1]["last_message_id"] == events[5][1]["last_message_id"]
        assert events[2][1]["version"] == events[5][1]["version"]

        conn.execute("DELETE FROM chatd.chats WHERE id = %s", (chat,))
        deleted = cap.drain()
        assert kinds(deleted) == [("chat", "deleted"), ("user", "deleted")]
        # the owner's hint describes the row as it was
        owner_hint = deleted[1][1]
        assert set(owner_hint) == {
            "kind", "chat_id", "version", "status", "archived", "parent_chat_id", "organization_id"
        }
        assert (owner_hint["chat_id"], owner_hint["version"]) == (str(chat), deleted[0][1]["version"])
        assert owner_hint["status"] is not None and owner_hint["organization_id"] is not None
    finally:
        cap.close()


def test_every_notification_of_send_message_and_finish_turn_names_the_message_it_inserted(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """A subscriber that keeps one notification per version must not miss the
    message: every notification of the call describes the chat with it."""
    org = factory.org()
    user = factory.user(org)
    factory.model_config(is_default=True)
    chat = conn.execute("SELECT chatd.create_chat(%s, %s, '\"hi\"')", (user, org)).fetchone()[0]
    cap = Capture(db)
    try:
        cap.listen(f"chatd_chat_{chat}")
        lease = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 5)").fetchone()[0]
        cap.drain()

        reply = conn.execute("SELECT chatd.finish_turn(%s, %s, '\"reply\"')", (chat, lease)).fetchone()[0]
        events = [p for c, p in cap.drain() if c == "chat"]
        assert {p["kind"] for p in events} == {"status"}, "the status names the reply: no message hint"
        assert [p["last_message_id"] for p in events] == [reply] * len(events)
        assert events[-1]["status"] == "waiting", "the last notification is the committed state"

        sent = conn.execute("SELECT chatd.send_message(%s, %s, '\"again\"')", (user, chat)).fetchone()[0]
        events = [p for c, p in cap.drain() if c == "chat"]
        assert {p["kind"] for p in events} == {"status"}
        assert [p["last_message_id"] for p in events] == [sent["message_id"]] * len(events)
        assert events[-1]["status"] == "pending" and events[-1]["version"] == sent["version"]
    finally:
        cap.close()


def test_the_status_notification_of_interrupt_edit_and_promote_names_the_new_message(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    user = factory.user(org)
    factory.model_config(is_default=True)
    chat = conn.execute("SELECT chatd.create_chat(%s, %s, '\"hi\"')", (user, org)).fetchone()[0]
    cap = Capture(db)

    def status_last_message_id() -> int:
        events = [p for c, p in cap.drain() if c == "chat"]
        [status] = [p for p in events if p["kind"] == "status"]
        assert status["version"] == max(p["version"] for p in events), "the status names the final version"
        return int(status["last_message_id"])

    def newest_message() -> int:
        return int(conn.execute("SELECT max(id) FROM chatd.messages WHERE chat_id = %s", (chat,)).fetchone()[0])

    try:
        cap.listen(f"chatd_chat_{chat}")
        conn.execute("SELECT chatd.send_message(%s, %s, '\"queued\"')", (user, chat))
        cap.drain()
        conn.execute("SELECT chatd.interrupt_chat(%s, %s)", (user, chat))  # promotes the queue head
        assert status_last_message_id() == newest_message()

        first = conn.execute(
            "SELECT min(id) FROM chatd.messages WHERE chat_id = %s AND role = 'user'", (chat,)
        ).fetchone()[0]
        edited = conn.execute("SELECT chatd.edit_message(%s, %s, %s, '\"edited\"')", (user, chat, first)).fetchone()[0]
        assert status_last_message_id() == edited

        sent = conn.execute("SELECT chatd.send_message(%s, %s, '\"later\"')", (user, chat)).fetchone()[0]
        cap.drain()
        promoted = conn.execute(
            "SELECT chatd.promote_queued_message(%s, %s, %s)", (user, chat, sent["queued_id"])
        ).fetchone()[0]
        assert status_last_message_id() == promoted
    finally:
        cap.close()


def test_delete_chat_notifies_deleted_for_every_chat_of_the_tree_and_nothing_else(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    user = factory.user(org)
    factory.model_config(is_default=True)
    root = conn.execute("SELECT chatd.create_chat(%s, %s, '\"hi\"')", (user, org)).fetchone()[0]
    child = conn.execute(
        "SELECT chatd.create_chat(%s, NULL, '\"sub\"', p_parent_chat_id => %s)", (user, root)
    ).fetchone()[0]
    conn.execute("SELECT chatd.send_message(%s, %s, '\"queued\"')", (user, root))
    cap = Capture(db)
    try:
        cap.listen(f"chatd_user_{user}")
        cap.listen(f"chatd_chat_{root}")
        cap.listen(f"chatd_chat_{child}")
        conn.execute("SELECT chatd.delete_chat(%s, %s)", (user, root))
        events = cap.drain()
        # wiping messages and the queue adds nothing: "deleted" is the last word
        assert sorted(kinds(events)) == [("chat", "deleted")] * 2 + [("user", "deleted")] * 2
        on_chat = [p for c, p in events if c == "chat"]
        assert {p["chat_id"] for p in on_chat} == {str(root), str(child)}
        # a hint with no content: the fields of a status hint (the worker of a
        # running chat sees its lease bumped)
        assert all(
            set(p) == {"kind", "chat_id", "version", "status", "archived", "worker_id", "lease", "last_message_id"}
            for p in on_chat
        )
        on_user = [p for c, p in events if c == "user"]
        assert all(p["archived"] is True and p["status"] == "waiting" for p in on_user)
    finally:
        cap.close()


def test_a_message_inserted_after_the_chat_write_of_its_transaction_still_sends_its_message_hint(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """save_interrupted_turn clears the interrupted turn (a status-kind
    notification, read before the reply existed) and then inserts the reply:
    only the message hint, at commit, names it."""
    org = factory.org()
    user = factory.user(org)
    factory.model_config(is_default=True)
    chat = conn.execute("SELECT chatd.create_chat(%s, %s, '\"hi\"')", (user, org)).fetchone()[0]
    lease = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 5)").fetchone()[0]
    conn.execute("SELECT chatd.interrupt_chat(%s, %s)", (user, chat))
    cap = Capture(db)
    try:
        cap.listen(f"chatd_chat_{chat}")
        saved = conn.execute(
            "SELECT chatd.save_interrupted_turn(%s, %s, '\"partial\"')", (chat, lease)
        ).fetchone()[0]
        events = [p for c, p in cap.drain() if c == "chat"]
        assert [p["kind"] for p in events] == ["status", "message"]
        assert events[0]["last_message_id"] < saved, "the status was read before the reply existed"
        assert events[1]["last_message_id"] == saved and events[1]["op"] == "insert"
        version = conn.execute("SELECT version FROM chatd.chats WHERE id = %s", (chat,)).fetchone()[0]
        assert events[0]["version"] == events[1]["version"] == version
    finally:
        cap.close()


def test_a_chat_write_that_keeps_the_version_does_not_hide_the_message_hint_before_it(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """An UPDATE of heartbeat_at alone writes the chat row but keeps its
    version and sends nothing: the message inserted before it in the same
    transaction must still be announced."""
    org = factory.org()
    user = factory.user(org)
    factory.model_config(is_default=True)
    chat = conn.execute("SELECT chatd.create_chat(%s, %s, '\"hi\"')", (user, org)).fetchone()[0]
    conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 5)")
    before = conn.execute("SELECT version FROM chatd.chats WHERE id = %s", (chat,)).fetchone()[0]
    cap = Capture(db)
    try:
        cap.listen(f"chatd_chat_{chat}")
        with conn.transaction():
            inserted = conn.execute(
                "INSERT INTO chatd.messages (chat_id, role, content) "
                "VALUES (%s, 'assistant', '[{\"type\": \"text\", \"text\": \"note\"}]') RETURNING id",
                (chat,),
            ).fetchone()[0]
            conn.execute("UPDATE chatd.chats SET heartbeat_at = clock_timestamp() WHERE id = %s", (chat,))
        events = [p for c, p in cap.drain() if c == "chat"]
        assert [(p["kind"], p["op"]) for p in events] == [("message", "insert")]
        assert events[0]["last_message_id"] == inserted and events[0]["version"] == before + 1
    finally:
        cap.close()
