"""Concurrent spend admissions (docs/spend-limits.md, "Concurrency").

Deterministic: the first transaction is held open after its admission and
the spend it records; the second admission runs on another connection in a
thread, and the test waits until PostgreSQL reports that backend waiting on
a lock (pg_stat_activity.wait_event_type = 'Lock') before it lets the first
commit. Nothing is synchronized by sleeping.

The lock is a row lock on the user's row in chatd.users (FOR NO KEY
UPDATE), which only chatd_owner can take: the tests at the end show that
neither chatd_app, chatd_worker nor a login without privileges can take it,
and that the advisory key of earlier versions no longer blocks anyone.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from chatd.testing import DatabaseServer, Factory, as_role

LIMIT = 1_000_000
WAIT_DEADLINE_S = 30.0


@pytest.fixture
def limits_on(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => %s)", (LIMIT,))


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


@contextmanager
def transaction(db: str, isolation: str = "READ COMMITTED") -> Iterator[psycopg.Connection[Any]]:
    """A connection inside an explicit transaction, rolled back unless the
    test committed it."""
    with psycopg.connect(db) as connection:
        connection.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        try:
            yield connection
        finally:
            connection.rollback()


def backend_pid(connection: psycopg.Connection[Any]) -> int:
    # from the connection's own state: the connection may be busy in a thread
    return connection.info.backend_pid


# A backend waiting for a row lock waits for the holder's transaction id
# (the first waiter) or for the tuple lock (the waiters queued behind it).
ROW_LOCK_WAIT_EVENTS = ("transactionid", "tuple")


def wait_until_lock_waiting(observer: psycopg.Connection[Any], pid: int, pending: Future[Any]) -> None:
    """Poll pg_stat_activity until backend ``pid`` waits on a row lock."""
    deadline = time.monotonic() + WAIT_DEADLINE_S
    while time.monotonic() < deadline:
        if pending.done():
            pending.result()  # re-raise its error, if any
            pytest.fail("the second admission finished instead of waiting for the first")
        row = observer.execute(
            "SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        if row is not None and row[0] == "Lock":
            assert row[1] in ROW_LOCK_WAIT_EVENTS, f"waiting on {row[1]}, not the user's admission row lock"
            return
    pytest.fail(f"backend {pid} never waited on a lock")


def admit(connection: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID | None) -> None:
    connection.execute("SELECT chatd.admit_spend(%s, %s)", (user, org))


def admit_in_thread(
    pool: ThreadPoolExecutor, connection: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID | None
) -> Future[None]:
    return pool.submit(admit, connection, user, org)


def record_spend(connection: psycopg.Connection[Any], chat: uuid.UUID, cost: int) -> None:
    """What a turn records: an assistant message with its cost."""
    connection.execute("SELECT chatd_test.spend(%s, %s)", (chat, cost))


def usage_limit_detail(error: BaseException) -> dict[str, Any]:
    assert isinstance(error, psycopg.Error), error
    assert error.sqlstate == "CD006", error
    detail = error.diag.message_detail
    assert detail is not None
    parsed: dict[str, Any] = json.loads(detail)
    return parsed


def spender(factory: Factory, spent: int) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    org = factory.org()
    user = factory.user(org)
    chat = factory.chat(user, org=org)
    if spent:
        factory.message(chat, role="assistant", cost_micros=spent)
    return org, user, chat


@pytest.mark.usefixtures("limits_on")
def test_two_admissions_at_the_limit_cannot_both_pass(
    db: str, conn: psycopg.Connection[Any], factory: Factory, pool: ThreadPoolExecutor
) -> None:
    org, user, chat = spender(factory, LIMIT - 1)
    with transaction(db) as first, transaction(db) as second:
        admit(first, user, org)  # 999999 of 1000000: admitted
        record_spend(first, chat, 5_000)  # the spend that reaches the limit
        pending = admit_in_thread(pool, second, user, org)
        wait_until_lock_waiting(conn, backend_pid(second), pending)
        first.commit()
        with pytest.raises(psycopg.Error) as refused:
            pending.result(timeout=WAIT_DEADLINE_S)
        detail = usage_limit_detail(refused.value)
    assert detail["spent_micros"] == LIMIT - 1 + 5_000
    assert detail["limit_micros"] == LIMIT
    assert set(detail) == {"kind", "spent_micros", "limit_micros", "resets_at"}


@pytest.mark.usefixtures("limits_on")
def test_second_admission_passes_when_the_first_rolls_back(
    db: str, conn: psycopg.Connection[Any], factory: Factory, pool: ThreadPoolExecutor
) -> None:
    org, user, chat = spender(factory, LIMIT - 1)
    with transaction(db) as first, transaction(db) as second:
        admit(first, user, org)
        record_spend(first, chat, 5_000)
        pending = admit_in_thread(pool, second, user, org)
        wait_until_lock_waiting(conn, backend_pid(second), pending)
        first.rollback()
        pending.result(timeout=WAIT_DEADLINE_S)  # admitted: the spend never happened
        second.commit()


@pytest.mark.usefixtures("limits_on")
def test_waiting_admission_sees_spend_committed_while_it_waited_in_another_org(
    db: str, conn: psycopg.Connection[Any], factory: Factory, pool: ThreadPoolExecutor
) -> None:
    """Default limit, so spend is global: the first admission in org A records
    spend; the second, waiting in org B, must see it once A commits."""
    org_a, user, chat_a = spender(factory, LIMIT - 1)
    org_b = factory.org()
    factory.member(org_b, user)
    with transaction(db) as first, transaction(db) as second:
        second.execute("SELECT 1")  # the second transaction is already under way
        admit(first, user, org_a)
        record_spend(first, chat_a, 1)
        pending = admit_in_thread(pool, second, user, org_b)
        wait_until_lock_waiting(conn, backend_pid(second), pending)
        first.commit()
        with pytest.raises(psycopg.Error) as refused:
            pending.result(timeout=WAIT_DEADLINE_S)
        assert usage_limit_detail(refused.value)["spent_micros"] == LIMIT


@pytest.mark.usefixtures("limits_on")
def test_admissions_of_different_users_do_not_block_each_other(
    db: str, conn: psycopg.Connection[Any], factory: Factory, pool: ThreadPoolExecutor
) -> None:
    org, alice, _ = spender(factory, 0)
    bob = factory.user(org)
    with transaction(db) as first, transaction(db) as other, transaction(db) as same:
        admit(first, alice, org)  # holds alice's lock until the end of the transaction
        # bob's admission completes while alice's lock is held; the timeout
        # only turns a wrong implementation's hang into a failure
        other.execute("SET LOCAL lock_timeout = '10s'")
        admit(other, bob, org)
        # control: a second admission of alice does wait
        pending = admit_in_thread(pool, same, alice, org)
        wait_until_lock_waiting(conn, backend_pid(same), pending)
        first.commit()
        pending.result(timeout=WAIT_DEADLINE_S)


def test_disabled_config_admits_without_locking(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    conn.execute("SELECT chatd_test.spend_config(p_enabled => FALSE, p_default_limit_micros => 0)")
    org, user, _ = spender(factory, LIMIT)
    with transaction(db) as first, transaction(db) as second:
        admit(first, user, org)
        second.execute("SET LOCAL lock_timeout = '10s'")
        admit(second, user, org)  # no lock taken by either
        assert_admission_lock_free(conn, user)


def admission_lock_taken(observer: psycopg.Connection[Any], user: uuid.UUID) -> bool:
    """Whether another transaction holds the user's admission lock: the
    owner's own attempt to lock the row fails at once (NOWAIT)."""
    try:
        with observer.transaction():
            observer.execute("SELECT 1 FROM chatd.users WHERE id = %s FOR NO KEY UPDATE NOWAIT", (user,))
    except psycopg.errors.LockNotAvailable:
        return True
    return False


def assert_admission_lock_free(observer: psycopg.Connection[Any], user: uuid.UUID) -> None:
    assert not admission_lock_taken(observer, user), "the user's admission row is locked"


@pytest.mark.usefixtures("limits_on")
def test_an_admission_holds_its_user_row_lock_until_its_transaction_ends(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org, user, _ = spender(factory, 0)
    other = factory.user(org)
    with transaction(db) as first:
        admit(first, user, org)
        assert admission_lock_taken(conn, user)
        assert_admission_lock_free(conn, other)
        first.commit()
    assert_admission_lock_free(conn, user)


@pytest.mark.usefixtures("limits_on")
@pytest.mark.parametrize(
    ("isolation", "refused"),
    [("READ COMMITTED", False), ("REPEATABLE READ", True), ("SERIALIZABLE", False)],
)
def test_isolation_levels(db: str, factory: Factory, isolation: str, refused: bool) -> None:
    """REPEATABLE READ is refused: its snapshot may predate the lock."""
    org, user, _ = spender(factory, 0)
    with transaction(db, isolation) as connection:
        if refused:
            with pytest.raises(psycopg.errors.InvalidTransactionState):
                admit(connection, user, org)
        else:
            admit(connection, user, org)


def create_chat(connection: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID, model: uuid.UUID) -> uuid.UUID:
    row = connection.execute(
        "SELECT chatd.create_chat(%s, %s, '\"hello\"', p_model_config_id => %s)", (user, org, model)
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


@pytest.mark.usefixtures("limits_on")
def test_two_create_chats_at_the_limit_cannot_both_pass(
    db: str, conn: psycopg.Connection[Any], factory: Factory, pool: ThreadPoolExecutor
) -> None:
    """Through chatd.create_chat: the first creates a chat and records the
    spend that reaches the limit, held open; the second create_chat waits on
    the user's spend lock and, once the first commits, is refused."""
    org, user, _ = spender(factory, LIMIT - 1)
    model = factory.model_config()
    with transaction(db) as first, transaction(db) as second:
        chat = create_chat(first, user, org, model)
        record_spend(first, chat, 1)
        pending = pool.submit(create_chat, second, user, org, model)
        wait_until_lock_waiting(conn, backend_pid(second), pending)
        first.commit()
        with pytest.raises(psycopg.Error) as refused:
            pending.result(timeout=WAIT_DEADLINE_S)
        assert usage_limit_detail(refused.value) == {
            "kind": "usage_limit",
            "spent_micros": LIMIT,
            "limit_micros": LIMIT,
            "resets_at": usage_limit_detail(refused.value)["resets_at"],
        }
    owned = conn.execute("SELECT count(*) FROM chatd.chats WHERE owner_id = %s", (user,)).fetchone()
    assert owned == (2,)  # the spender fixture's chat and the first create_chat's


@pytest.mark.usefixtures("limits_on")
def test_serializable_admission_on_a_stale_snapshot_fails_to_commit(
    db: str, conn: psycopg.Connection[Any], factory: Factory, pool: ThreadPoolExecutor
) -> None:
    """Under SERIALIZABLE the second snapshot predates the first's commit, so
    its admission reads stale spend; SSI then refuses its commit (40001)."""
    org, user, _ = spender(factory, LIMIT - 1)
    model = factory.model_config()
    with transaction(db, "SERIALIZABLE") as first, transaction(db, "SERIALIZABLE") as second:
        second.execute("SELECT count(*) FROM chatd.chats")  # takes the snapshot now
        chat = create_chat(first, user, org, model)
        record_spend(first, chat, 1)
        pending = pool.submit(create_chat, second, user, org, model)
        wait_until_lock_waiting(conn, backend_pid(second), pending)
        first.commit()
        with pytest.raises(psycopg.errors.SerializationFailure):
            pending.result(timeout=WAIT_DEADLINE_S)
            second.commit()


# --------------------------------------------------------------------------
# Who can take the admission lock


@pytest.fixture
def plain_login(pg: DatabaseServer, db: str) -> Iterator[str]:
    """A login role with no chatd privilege at all (only the default CONNECT
    of PUBLIC); yields its DSN for the test database."""
    name = f"chatd_test_plain_{uuid.uuid4().hex[:10]}"
    password = "chatd-test-plain"
    with pg.admin() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
    try:
        yield psycopg.conninfo.make_conninfo(db, user=name, password=password)
    finally:
        with pg.admin() as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.mark.usefixtures("limits_on")
def test_the_old_advisory_key_held_by_a_login_without_privileges_does_not_block_create_chat(
    db: str, conn: psycopg.Connection[Any], factory: Factory, plain_login: str
) -> None:
    """Earlier versions serialized admissions on the documented advisory key
    (1667527536, uuid_hash(user)), which any login can take. Held by a role
    with no chatd privilege, it must not delay the victim's create_chat: the
    lock_timeout only turns a wrong implementation's hang into a failure."""
    org, victim, _ = spender(factory, 0)
    model = factory.model_config()
    with psycopg.connect(plain_login) as attacker:
        attacker.execute("SELECT pg_advisory_xact_lock(1667527536, uuid_hash(%s))", (victim,))
        held = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1667527536::oid AND granted"
        ).fetchone()
        assert held == (1,), "the attacker holds the old key"
        with transaction(as_role(db, "app")) as app:
            app.execute("SET LOCAL lock_timeout = '5s'")
            create_chat(app, victim, org, model)
            app.commit()
        attacker.rollback()


@pytest.mark.parametrize("kind", ["app", "worker", "plain"])
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1 FROM chatd.users WHERE id = %s FOR NO KEY UPDATE",
        "SELECT 1 FROM chatd.users WHERE id = %s FOR UPDATE",
        "SELECT 1 FROM chatd.users WHERE id = %s FOR SHARE",
        "LOCK TABLE chatd.users IN ACCESS EXCLUSIVE MODE",
    ],
    ids=["no-key-update", "update", "share", "lock-table"],
)
def test_the_admission_lock_cannot_be_taken_by_any_role_but_the_owner(
    db: str, factory: Factory, plain_login: str, kind: str, statement: str
) -> None:
    user = factory.user(factory.org())
    dsn = plain_login if kind == "plain" else as_role(db, kind)
    with transaction(dsn) as connection:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            connection.execute(statement, (user,) if "%s" in statement else None)


@pytest.mark.usefixtures("limits_on")
def test_a_promotion_waits_for_a_concurrent_admission_and_sees_its_spend(
    db: str, conn: psycopg.Connection[Any], factory: Factory, pool: ThreadPoolExecutor
) -> None:
    """finish_turn promoting a queue head is an admission of the chat's owner:
    it waits while another admission of that owner is open, and once that
    one commits the spend it recorded, the promotion is refused."""
    org, user, other_chat = spender(factory, LIMIT - 1)
    model = factory.model_config()
    chat = create_chat(conn, user, org, model)
    lease_row = conn.execute("SELECT lease FROM chatd.acquire_chats('w-race', 10) WHERE chat_id = %s", (chat,))
    lease = lease_row.fetchone()
    assert lease is not None
    conn.execute("SELECT chatd.send_message(%s, %s, '\"queued\"')", (user, chat))
    with transaction(db) as first, transaction(as_role(db, "worker")) as worker:
        admit(first, user, org)
        record_spend(first, other_chat, 1)  # reaches the limit, not committed yet
        pending = pool.submit(
            worker.execute, "SELECT chatd.finish_turn(%s, %s, '\"answer\"')", (chat, lease[0])
        )
        wait_until_lock_waiting(conn, backend_pid(worker), pending)
        first.commit()
        pending.result(timeout=WAIT_DEADLINE_S)
        worker.commit()
    row = conn.execute(
        "SELECT status::text, last_error ->> 'kind', (last_error ->> 'spent_micros')::bigint, "
        "(SELECT count(*) FROM chatd.queued_messages WHERE chat_id = %s) FROM chatd.chats WHERE id = %s",
        (chat, chat),
    ).fetchone()
    assert row == ("error", "usage_limit", LIMIT, 1)
