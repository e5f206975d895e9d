"""Deterministic two-connection races of the state machine, no sleeps.

Interleavings are forced with open transactions (row locks held until
commit) and, when one connection must be blocked on another's lock, by
polling pg_stat_activity for wait_event_type = 'Lock' on its backend. Each
race runs ITERATIONS times inside the test.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from chatd.testing import Factory

ITERATIONS = 50


def _connect(db: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(db, autocommit=autocommit)


def _wait_until_blocked(observer: psycopg.Connection[Any], pid: int) -> None:
    """Returns once backend pid waits for a lock (busy-polls the catalog)."""
    for _ in range(200_000):
        row = observer.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row is not None and row[0] == "Lock":
            return
    raise AssertionError(f"backend {pid} never blocked on a lock")


class _Background:
    """Runs fn(conn) in a thread; join() returns its result or raises."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc

    def join(self) -> Any:
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def _claim(conn: psycopg.Connection[Any], chat: uuid.UUID, worker: str = "w1") -> int:
    row = conn.execute("SELECT chatd_test.claim(%s, %s)", (chat, worker)).fetchone()
    assert row is not None
    return int(row[0])


def test_two_workers_claim_each_pending_chat_exactly_once(db: str, factory: Factory) -> None:
    owner = factory.user(factory.org())
    model = factory.model_config()
    with _connect(db) as a, _connect(db) as b, _connect(db, autocommit=True) as setup:
        for iteration in range(ITERATIONS):
            setup.execute("DELETE FROM chatd.chats")
            chats = {factory.chat(owner, model=model) for _ in range(6)}
            if iteration % 2 == 0:
                # A claims some and holds its locks; B skips them, takes the rest
                got_a = {r[0] for r in a.execute("SELECT chat_id FROM chatd.acquire_chats('A', 4)")}
                got_b = {r[0] for r in b.execute("SELECT chat_id FROM chatd.acquire_chats('B', 10)")}
                a.commit()
                b.commit()
                assert len(got_a) == 4 and len(got_b) == 2
            else:
                # both at once, released together by a barrier
                barrier = threading.Barrier(2)

                def grab(
                    conn: psycopg.Connection[Any], worker: str, barrier: threading.Barrier = barrier
                ) -> set[uuid.UUID]:
                    barrier.wait()
                    rows = conn.execute("SELECT chat_id FROM chatd.acquire_chats(%s, 4)", (worker,)).fetchall()
                    conn.commit()
                    return {r[0] for r in rows}

                ta = _Background(lambda: grab(a, "A"))
                tb = _Background(lambda: grab(b, "B"))
                got_a, got_b = ta.join(), tb.join()
            assert not (got_a & got_b), "a chat was claimed twice"
            assert got_a | got_b <= chats
            owners = dict(setup.execute(
                "SELECT id, worker_id FROM chatd.chats WHERE status = 'running'"
            ).fetchall())
            assert {c for c, w in owners.items() if w == "A"} == got_a
            assert {c for c, w in owners.items() if w == "B"} == got_b
            if iteration % 2 == 0:
                assert got_a | got_b == chats


def test_send_message_racing_finish_turn_never_loses_or_stalls(db: str, factory: Factory) -> None:
    owner = factory.user(factory.org())
    model = factory.model_config()
    with _connect(db) as worker, _connect(db) as app, _connect(db, autocommit=True) as observer:
        app_pid = app.info.backend_pid
        worker_pid = worker.info.backend_pid
        for iteration in range(ITERATIONS):
            chat = factory.chat(owner, model=model)
            lease = _claim(observer, chat)
            text = f"racing {iteration}"
            if iteration % 2 == 0:
                # finish_turn first (holds the row lock); send_message blocks, then sees waiting
                worker.execute("SELECT chatd.finish_turn(%s, %s, '\"reply\"')", (chat, lease))
                sender = _Background(lambda chat=chat, text=text: (
                    app.execute(
                        "SELECT chatd.send_message(%s, %s, %s)", (owner, chat, json.dumps(text))
                    ).fetchone(),
                    app.commit(),
                ))
                _wait_until_blocked(observer, app_pid)
                worker.commit()
                result = sender.join()[0][0]
                assert result["queued"] is False
            else:
                # send_message first (queues, holds the lock); finish_turn blocks, then promotes it
                result = app.execute(
                    "SELECT chatd.send_message(%s, %s, %s)", (owner, chat, json.dumps(text))
                ).fetchone()[0]
                assert result["queued"] is True
                finisher = _Background(lambda chat=chat, lease=lease: (
                    worker.execute("SELECT chatd.finish_turn(%s, %s, '\"reply\"')", (chat, lease)).fetchone(),
                    worker.commit(),
                ))
                _wait_until_blocked(observer, worker_pid)
                app.commit()
                finisher.join()
            status, queue_length = observer.execute(
                "SELECT status, (SELECT count(*) FROM chatd.queued_messages WHERE chat_id = c.id) "
                "FROM chatd.chats AS c WHERE c.id = %s",
                (chat,),
            ).fetchone()
            assert status == "pending", "the new message must make the chat runnable"
            assert queue_length == 0
            roles = observer.execute(
                "SELECT role::text, content -> 0 ->> 'text' FROM chatd.messages "
                "WHERE chat_id = %s AND NOT deleted ORDER BY id",
                (chat,),
            ).fetchall()
            assert roles[-2:] == [("assistant", "reply"), ("user", text)], "message lost or out of order"


def test_recovery_racing_a_late_heartbeat(db: str, factory: Factory) -> None:
    owner = factory.user(factory.org())
    with _connect(db) as beat, _connect(db) as recover, _connect(db, autocommit=True) as observer:
        beat_pid = beat.info.backend_pid
        for iteration in range(ITERATIONS):
            chat = factory.chat(owner)
            lease = _claim(observer, chat, "w1")
            observer.execute("SELECT chatd_test.make_stale('w1')")
            if iteration % 2 == 0:
                # the late heartbeat wins the worker row: recovery skips it (SKIP LOCKED)
                lost = beat.execute(
                    "SELECT * FROM chatd.heartbeat('w1', %s, %s)", ([chat], [lease])
                ).fetchall()
                assert lost == []
                assert recover.execute("SELECT chatd.recover_stale_chats()").fetchone()[0] == 0
                recover.commit()
                beat.commit()
                assert recover.execute("SELECT chatd.recover_stale_chats()").fetchone()[0] == 0
                recover.commit()
                expected = "running"
            else:
                # recovery wins the worker row: the blocked heartbeat then reports the chat lost
                assert recover.execute("SELECT chatd.recover_stale_chats()").fetchone()[0] == 1
                hb = _Background(lambda chat=chat, lease=lease: (
                    beat.execute("SELECT * FROM chatd.heartbeat('w1', %s, %s)", ([chat], [lease])).fetchall(),
                    beat.commit(),
                ))
                _wait_until_blocked(observer, beat_pid)
                recover.commit()
                assert hb.join()[0] == [(chat,)]
                expected = "pending"
            status, worker_id = observer.execute(
                "SELECT status, worker_id FROM chatd.chats WHERE id = %s", (chat,)
            ).fetchone()
            assert status == expected
            assert worker_id == ("w1" if expected == "running" else None)
            observer.execute("DELETE FROM chatd.chats WHERE id = %s", (chat,))


def _drain_until_sentinel(listener: psycopg.Connection[Any], sender: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """All notifications that reached listener before a sentinel sent now.

    Notifications are delivered in commit order, so a sentinel committed
    after an event arrives after that event's notifications."""
    token = uuid.uuid4().hex
    sender.execute("SELECT pg_notify('chatd_test_sentinel', %s)", (token,))
    got: list[dict[str, Any]] = []
    for notify in listener.notifies(timeout=10):
        if notify.channel == "chatd_test_sentinel":
            if notify.payload == token:
                return got
            continue
        got.append(json.loads(notify.payload))
    raise AssertionError("sentinel notification never arrived")


def test_subscriber_listen_then_snapshot_never_misses_nor_double_applies(db: str, factory: Factory) -> None:
    owner = factory.user(factory.org())
    with (
        _connect(db, autocommit=True) as sub,
        _connect(db) as writer,
        _connect(db, autocommit=True) as other,
    ):
        sub.execute("LISTEN chatd_test_sentinel")
        for iteration in range(ITERATIONS):
            chat = factory.chat(owner)
            channel = f"chatd_chat_{chat}"
            # the writer's status change (pending -> running) is prepared, not committed
            claimed = writer.execute("SELECT chat_id FROM chatd.acquire_chats('w1', 10)").fetchall()
            assert claimed == [(chat,)]
            moment = iteration % 3  # 0: before LISTEN, 1: between LISTEN and snapshot, 2: after snapshot
            if moment == 0:
                writer.commit()
            sub.execute(f'LISTEN "{channel}"')
            if moment == 1:
                writer.commit()
            snapshot = sub.execute("SELECT chatd.get_chat_snapshot(%s, %s)", (owner, chat)).fetchone()[0]
            if moment == 2:
                writer.commit()
            state = {"version": snapshot["version"], "status": snapshot["chat"]["status"]}
            applied = 0
            for event in _drain_until_sentinel(sub, other):
                if event["chat_id"] != str(chat):
                    continue
                if event["version"] > state["version"]:
                    state = {"version": event["version"], "status": event["status"]}
                    applied += 1
            truth = other.execute("SELECT version, status FROM chatd.chats WHERE id = %s", (chat,)).fetchone()
            assert (state["version"], state["status"]) == (truth[0], truth[1]) == (state["version"], "running")
            assert applied == (1 if moment == 2 else 0), f"moment {moment}: applied {applied} times"
            sub.execute(f'UNLISTEN "{channel}"')


def _hold_row(conn: psycopg.Connection[Any], chat: uuid.UUID) -> None:
    """Locks the chat row in conn's open transaction (until commit)."""
    conn.execute("SELECT 1 FROM chatd.chats WHERE id = %s FOR UPDATE", (chat,))


def _create_sub_agent_while_tree_call_waits(
    db: str, factory: Factory, tree_call: str, child_state: str
) -> list[tuple[int, tuple[Any, ...] | None]]:
    """Five times: create_chat (child of P) queued on P first (it holds the
    root), then tree_call(owner, root) queued second, both behind a third
    transaction holding P. Once P is free the creation commits first. Returns,
    per round, what tree_call returned and child_state (a SELECT list) of the
    new child."""
    owner = factory.user(factory.org())
    model = factory.model_config(is_default=True)
    rounds: list[tuple[int, tuple[Any, ...] | None]] = []
    with _connect(db) as creator, _connect(db) as tree_op, _connect(db) as holder, \
            _connect(db, autocommit=True) as observer:
        for _ in range(5):
            root = factory.chat(owner, model=model)
            parent = factory.chat(owner, model=model, parent=root)
            _hold_row(holder, parent)
            create = _Background(lambda parent=parent: (
                creator.execute(
                    "SELECT chatd.create_chat(%s, NULL, '\"sub-task\"', p_parent_chat_id => %s)", (owner, parent)
                ).fetchone(),
                creator.commit(),
            ))
            _wait_until_blocked(observer, creator.info.backend_pid)
            tree = _Background(lambda root=root: (
                tree_op.execute(f"SELECT chatd.{tree_call}(%s, %s)", (owner, root)).fetchone(),
                tree_op.commit(),
            ))
            _wait_until_blocked(observer, tree_op.info.backend_pid)
            holder.commit()
            child = create.join()[0][0]
            count = tree.join()[0][0]
            rounds.append((count, observer.execute(
                f"SELECT {child_state} FROM chatd.chats WHERE id = %s", (child,)
            ).fetchone()))
    return rounds


def test_creating_a_sub_agent_chat_racing_archive_of_its_tree_never_deadlocks(db: str, factory: Factory) -> None:
    # create_chat (child of P) queued on P first, archive_chat(root) second, both
    # behind a third transaction holding P: once P is free, the creation got
    # P first. Locking the parent before the root (the foreign key) deadlocked
    # with archive (root, then the subtree): 40P01.
    for count, archived in _create_sub_agent_while_tree_call_waits(db, factory, "archive_chat", "archived"):
        assert count == 3, "the archive waited for the creation and archived the new child too"
        assert archived == (True,)


def test_finish_turns_racing_archive_of_the_tree_never_deadlocks(db: str, factory: Factory) -> None:
    # A batch finishing a child and its root, with the child's id sorting
    # first, queued on the child first; archive_chat(root) second. Locking by
    # id alone (child, then root) deadlocked with archive (root, then child).
    owner = factory.user(factory.org())
    model = factory.model_config()
    with _connect(db) as finisher, _connect(db) as archiver, _connect(db) as holder, \
            _connect(db, autocommit=True) as observer:
        for _ in range(5):
            root = factory.chat(owner, model=model)
            child = factory.chat(owner, model=model, parent=root)
            while child > root:
                child = factory.chat(owner, model=model, parent=root)
            leases = {chat: _claim(observer, chat) for chat in (root, child)}
            turns = [{"chat_id": str(chat), "lease": lease, "content": "done"} for chat, lease in leases.items()]
            _hold_row(holder, child)
            finish = _Background(lambda turns=turns: (
                finisher.execute("SELECT chat_id, message_id FROM chatd.finish_turns(%s)",
                                 (json.dumps(turns),)).fetchall(),
                finisher.commit(),
            ))
            _wait_until_blocked(observer, finisher.info.backend_pid)
            archive = _Background(lambda root=root: (
                archiver.execute("SELECT chatd.archive_chat(%s, %s)", (owner, root)).fetchone(),
                archiver.commit(),
            ))
            _wait_until_blocked(observer, archiver.info.backend_pid)
            holder.commit()
            finished = finish.join()[0]
            assert {c for c, m in finished if m is not None} == {root, child}
            archive.join()
            rows = observer.execute(
                "SELECT status::text, archived FROM chatd.chats WHERE id = ANY(%s)", ([root, child],)
            ).fetchall()
            assert sorted(rows) == [("waiting", True), ("waiting", True)]


def test_a_sub_agent_chat_created_while_its_tree_is_deleted_is_deleted_too(db: str, factory: Factory) -> None:
    # create_chat (child of P) queued on P first (it holds the root), then
    # delete_chat(root) queued on the root: once P is free the creation
    # commits, and the deletion, locking in the tree lock order, sees and
    # deletes the new child too. Nothing deadlocks.
    for count, row in _create_sub_agent_while_tree_call_waits(
        db, factory, "delete_chat", "deleted_at IS NOT NULL, archived"
    ):
        assert count == 3, "the deletion waited for the creation and deleted the new child too"
        assert row == (True, True)


def test_creating_a_sub_agent_chat_under_a_tree_being_deleted_fails_as_not_found(
    db: str, factory: Factory
) -> None:
    # delete_chat(root) holds the tree in an open transaction; create_chat
    # under the parent waits on the root, then finds the parent deleted.
    owner = factory.user(factory.org())
    model = factory.model_config(is_default=True)
    with _connect(db) as creator, _connect(db) as deleter, _connect(db, autocommit=True) as observer:
        root = factory.chat(owner, model=model)
        parent = factory.chat(owner, model=model, parent=root)
        assert deleter.execute("SELECT chatd.delete_chat(%s, %s)", (owner, root)).fetchone() == (2,)
        create = _Background(lambda: creator.execute(
            "SELECT chatd.create_chat(%s, NULL, '\"sub-task\"', p_parent_chat_id => %s)", (owner, parent)
        ).fetchone())
        _wait_until_blocked(observer, creator.info.backend_pid)
        deleter.commit()
        try:
            create.join()
        except psycopg.Error as exc:
            assert exc.sqlstate == "CD001"
        else:
            raise AssertionError("a sub-agent chat was created under a deleted chat")
        creator.rollback()
        assert observer.execute(
            "SELECT count(*) FROM chatd.chats WHERE root_chat_id = %s AND deleted_at IS NULL", (root,)
        ).fetchone() == (0,)


def test_a_turn_finished_while_its_chat_is_deleted_is_wiped_and_its_cost_kept(db: str, factory: Factory) -> None:
    # finish_turn commits while delete_chat waits for the chat row: the
    # deletion then wipes the new answer and keeps what it cost.
    owner = factory.user(factory.org())
    model = factory.model_config()
    with _connect(db) as worker, _connect(db) as deleter, _connect(db, autocommit=True) as observer:
        chat = factory.chat(owner, model=model)
        lease = _claim(observer, chat)
        worker.execute(
            "SELECT chatd.finish_turn(%s, %s, '\"answer\"', '{\"input_tokens\": 1000, \"output_tokens\": 1000}')",
            (chat, lease),
        )
        delete = _Background(lambda: (
            deleter.execute("SELECT chatd.delete_chat(%s, %s)", (owner, chat)).fetchone(),
            deleter.commit(),
        ))
        _wait_until_blocked(observer, deleter.info.backend_pid)
        worker.commit()
        assert delete.join()[0] == (1,)
        assert observer.execute(
            "SELECT content, deleted, total_cost_micros FROM chatd.messages WHERE chat_id = %s AND role = 'assistant'",
            (chat,),
        ).fetchall() == [([], True, 3000)]


def test_a_turn_finishing_after_its_chat_was_deleted_is_fenced(db: str, factory: Factory) -> None:
    # delete_chat holds the chat in an open transaction; the worker's
    # finish_turn waits, then finds its lease lost (CD004) and writes nothing.
    owner = factory.user(factory.org())
    model = factory.model_config()
    with _connect(db) as worker, _connect(db) as deleter, _connect(db, autocommit=True) as observer:
        chat = factory.chat(owner, model=model)
        lease = _claim(observer, chat)
        assert deleter.execute("SELECT chatd.delete_chat(%s, %s)", (owner, chat)).fetchone() == (1,)
        finish = _Background(lambda: worker.execute(
            "SELECT chatd.finish_turn(%s, %s, '\"late\"')", (chat, lease)
        ).fetchone())
        _wait_until_blocked(observer, worker.info.backend_pid)
        deleter.commit()
        try:
            finish.join()
        except psycopg.Error as exc:
            assert exc.sqlstate == "CD004"
        else:
            raise AssertionError("a deleted chat's worker finished its turn")
        worker.rollback()
        assert observer.execute(
            "SELECT count(*) FROM chatd.messages WHERE chat_id = %s AND role = 'assistant'", (chat,)
        ).fetchone() == (0,)
