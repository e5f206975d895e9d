"""Spend limits and the queue (docs/spend-limits.md, "Queued messages").

Every way a queued message becomes a turn is an admission: send_message
checks the limit for every message, queued or not; finish_turn,
finish_turns and interrupt_chat re-check it when they promote the queue
head (for the chat's owner, in the chat's organization), and
promote_queued_message re-checks it too. A promotion refused by the limit
leaves the chat in ``error`` with a usage_limit ChatError, and the queued
message stays queued.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

from chatd.testing import Factory, as_role

LIMIT = 1_000
# the fixture model's prices: 1 and 2 USD per million tokens, so 100 input
# and 100 output tokens cost 100 + 200 = 300 micro-dollars
USAGE = {"input_tokens": 100, "output_tokens": 100}
TURN_COST = 300
WORKER = "w-spend-queue"


@pytest.fixture
def limits_on(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => %s)", (LIMIT,))


def create_chat(conn: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID, model: uuid.UUID) -> uuid.UUID:
    row = conn.execute(
        "SELECT chatd.create_chat(%s, %s, '\"first\"', p_model_config_id => %s)", (user, org, model)
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def send(conn: psycopg.Connection[Any], user: uuid.UUID, chat: uuid.UUID, text: str = "next") -> dict[str, Any]:
    row = conn.execute("SELECT chatd.send_message(%s, %s, %s)", (user, chat, json.dumps(text))).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def claim(conn: psycopg.Connection[Any]) -> dict[uuid.UUID, int]:
    rows = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats(%s, 10)", (WORKER,)).fetchall()
    return {row[0]: row[1] for row in rows}


def finish(conn: psycopg.Connection[Any], chat: uuid.UUID, lease: int) -> None:
    conn.execute(
        "SELECT chatd.finish_turn(%s, %s, '\"answer\"', %s)", (chat, lease, json.dumps(USAGE))
    )


def spent(conn: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID) -> int:
    row = conn.execute(
        "SELECT spent_micros FROM chatd.usage_limit_status(%s, %s)", (user, org)
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def chat_row(conn: psycopg.Connection[Any], chat: uuid.UUID) -> tuple[str, dict[str, Any] | None, int]:
    row = conn.execute(
        "SELECT c.status::text, c.last_error, "
        "(SELECT count(*) FROM chatd.queued_messages AS q WHERE q.chat_id = c.id)::int "
        "FROM chatd.chats AS c WHERE c.id = %s",
        (chat,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def usage_limit_detail(error: BaseException) -> dict[str, Any]:
    assert isinstance(error, psycopg.Error), error
    assert error.sqlstate == "CD006", error
    assert error.diag.message_detail is not None
    parsed: dict[str, Any] = json.loads(error.diag.message_detail)
    return parsed


def spender(factory: Factory) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    org = factory.org()
    user = factory.user(org)
    model = factory.model_config()  # priced: 1 and 2 USD per million tokens
    return org, user, model


def queued_behind_a_running_turn(
    conn: psycopg.Connection[Any], factory: Factory, spent_before: int
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, int]:
    """A chat running under a lease, with one message queued, and the owner's
    recorded spend at ``spent_before`` (through another chat)."""
    org, user, model = spender(factory)
    chat = create_chat(conn, user, org, model)
    lease = claim(conn)[chat]
    send(conn, user, chat, "queued")
    if spent_before:
        other = factory.chat(user, org=org, model=model)
        factory.message(other, role="assistant", cost_micros=spent_before)
    return org, user, chat, lease


@pytest.mark.usefixtures("limits_on")
def test_alternating_two_chats_through_the_queue_cannot_pass_the_limit(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """The reported bypass: two chats, each with a message queued while it
    runs, finished and promoted in turn. Once the spend reaches the limit,
    no turn may start; what runs already may finish, so spend stays below
    limit + one turn per chat."""
    org, user, model = spender(factory)
    chats = [create_chat(conn, user, org, model), create_chat(conn, user, org, model)]
    refused_sends = 0
    for _ in range(20):
        leases = claim(conn)
        if not leases:
            break
        for chat, lease in leases.items():
            try:
                send(conn, user, chat)  # the chat is running: queued
            except psycopg.Error as exc:
                assert exc.sqlstate == "CD006", exc
                refused_sends += 1
            finish(conn, chat, lease)
    total = spent(conn, user, org)
    assert total < LIMIT + len(chats) * TURN_COST, f"spent {total} of a {LIMIT} limit"
    assert refused_sends > 0


@pytest.mark.usefixtures("limits_on")
def test_send_to_a_busy_chat_at_the_limit_is_refused_not_queued(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """Queueing is an admission too: the user gets CD006 at once, and nothing
    waits in the queue to be refused later."""
    org, user, chat, _ = queued_behind_a_running_turn(conn, factory, spent_before=LIMIT)
    with pytest.raises(psycopg.Error) as refused:
        send(conn, user, chat, "one more")
    assert usage_limit_detail(refused.value)["spent_micros"] == LIMIT
    assert chat_row(conn, chat) == ("running", None, 1)


@pytest.mark.usefixtures("limits_on")
def test_finish_turn_that_reaches_the_limit_keeps_the_queue_and_goes_to_error(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """The finished turn's own cost counts: 900 spent + 300 for this turn
    reaches the 1,000 limit, so the queue head does not go out."""
    org, user, chat, lease = queued_behind_a_running_turn(conn, factory, spent_before=LIMIT - 100)
    finish(conn, chat, lease)
    status, error, queued = chat_row(conn, chat)
    assert (status, queued) == ("error", 1)
    assert error is not None
    assert error["kind"] == "usage_limit"
    assert error["retryable"] is False
    assert error["spent_micros"] == LIMIT - 100 + TURN_COST
    assert error["limit_micros"] == LIMIT
    assert error["resets_at"] == usage_limit_detail_of_admission(conn, user, org)["resets_at"]
    assert json.loads(error["detail"]) == {
        "kind": "usage_limit",
        "spent_micros": LIMIT - 100 + TURN_COST,
        "limit_micros": LIMIT,
        "resets_at": error["resets_at"],
    }
    assert "spend limit reached" in error["message"]
    # the turn's answer is kept, and billed; the queued message was not sent
    roles = conn.execute(
        "SELECT array_agg(role::text ORDER BY id) FROM chatd.messages WHERE chat_id = %s", (chat,)
    ).fetchone()
    assert roles == (["user", "assistant"],)
    assert spent(conn, user, org) == LIMIT - 100 + TURN_COST


def usage_limit_detail_of_admission(
    conn: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID
) -> dict[str, Any]:
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("SELECT chatd.admit_spend(%s, %s)", (user, org))
    return usage_limit_detail(refused.value)


@pytest.mark.usefixtures("limits_on")
def test_finish_turn_under_the_limit_still_promotes_the_queue_head(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    _, _, chat, lease = queued_behind_a_running_turn(conn, factory, spent_before=LIMIT - TURN_COST - 1)
    finish(conn, chat, lease)
    assert chat_row(conn, chat) == ("pending", None, 0)


@pytest.mark.usefixtures("limits_on")
def test_finish_turns_batch_refuses_the_promotion_too(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """Two chats of one owner in one batch: the first promotion is admitted,
    the second, counting both turns' costs, is refused."""
    org, user, model = spender(factory)
    first, second = sorted([create_chat(conn, user, org, model), create_chat(conn, user, org, model)])
    leases = claim(conn)
    send(conn, user, first)
    send(conn, user, second)
    other = factory.chat(user, org=org, model=model)
    factory.message(other, role="assistant", cost_micros=LIMIT - 2 * TURN_COST)
    turns = [
        {"chat_id": str(chat), "lease": leases[chat], "content": "answer", "usage": USAGE}
        for chat in (second, first)
    ]
    rows = conn.execute("SELECT chat_id, message_id FROM chatd.finish_turns(%s)", (json.dumps(turns),)).fetchall()
    assert [row[0] for row in rows] == [first, second] and all(row[1] for row in rows)
    assert chat_row(conn, first) == ("pending", None, 0)
    status, error, queued = chat_row(conn, second)
    assert (status, queued) == ("error", 1)
    assert error is not None and error["kind"] == "usage_limit" and error["spent_micros"] == LIMIT


@pytest.mark.usefixtures("limits_on")
@pytest.mark.parametrize("claimed", [True, False], ids=["running", "pending"])
def test_interrupt_at_the_limit_stops_the_turn_and_keeps_the_queue(
    conn: psycopg.Connection[Any], factory: Factory, claimed: bool
) -> None:
    """A stop always stops; the queue head it would send is refused, so the
    chat goes to error (from running, or from pending: a new transition)."""
    org, user, model = spender(factory)
    chat = create_chat(conn, user, org, model)
    if claimed:
        claim(conn)
    send(conn, user, chat, "queued")
    other = factory.chat(user, org=org, model=model)
    factory.message(other, role="assistant", cost_micros=LIMIT)
    row = conn.execute("SELECT chatd.interrupt_chat(%s, %s)::text", (user, chat)).fetchone()
    assert row == ("error",)
    status, error, queued = chat_row(conn, chat)
    assert (status, queued) == ("error", 1)
    assert error is not None and error["kind"] == "usage_limit" and error["retryable"] is False


@pytest.mark.usefixtures("limits_on")
def test_promote_queued_message_at_the_limit_is_refused_and_changes_nothing(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    _, user, chat, _ = queued_behind_a_running_turn(conn, factory, spent_before=LIMIT)
    queued_id = conn.execute("SELECT id FROM chatd.queued_messages WHERE chat_id = %s", (chat,)).fetchone()
    assert queued_id is not None
    version = conn.execute("SELECT version FROM chatd.chats WHERE id = %s", (chat,)).fetchone()
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("SELECT chatd.promote_queued_message(%s, %s, %s)", (user, chat, queued_id[0]))
    assert usage_limit_detail(refused.value)["spent_micros"] == LIMIT
    assert chat_row(conn, chat) == ("running", None, 1)
    assert conn.execute("SELECT version FROM chatd.chats WHERE id = %s", (chat,)).fetchone() == version


@pytest.mark.usefixtures("limits_on")
def test_a_refused_promotion_can_be_sent_once_the_limit_allows_it(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """What the user does next: raise the limit (or wait for the period to
    reset), then promote the kept message: error -> pending, error cleared."""
    _, user, chat, lease = queued_behind_a_running_turn(conn, factory, spent_before=LIMIT)
    finish(conn, chat, lease)
    assert chat_row(conn, chat)[0] == "error"
    conn.execute("SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => %s)", (10 * LIMIT,))
    queued_id = conn.execute("SELECT id FROM chatd.queued_messages WHERE chat_id = %s", (chat,)).fetchone()
    assert queued_id is not None
    conn.execute("SELECT chatd.promote_queued_message(%s, %s, %s)", (user, chat, queued_id[0]))
    assert chat_row(conn, chat) == ("pending", None, 0)


@pytest.mark.usefixtures("limits_on")
def test_a_refused_promotion_notifies_the_usage_limit_error(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    _, _, chat, lease = queued_behind_a_running_turn(conn, factory, spent_before=LIMIT)
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute(f'LISTEN "chatd_chat_{chat}"')
        listener.execute("LISTEN chatd_wake")
        finish(conn, chat, lease)
        conn.execute("SELECT pg_notify(%s, 'end')", (f"chatd_chat_{chat}",))
        got = []
        for note in listener.notifies(timeout=10):
            if note.payload == "end":
                break
            got.append((note.channel, json.loads(note.payload)))
    statuses = [(payload["kind"], payload.get("status")) for channel, payload in got if channel != "chatd_wake"]
    assert ("error", "error") in statuses
    error = next(payload["error"] for _, payload in got if payload.get("kind") == "error")
    assert error["kind"] == "usage_limit" and error["retryable"] is False
    assert not [channel for channel, _ in got if channel == "chatd_wake"], "nothing became runnable"


@pytest.mark.usefixtures("limits_on")
def test_promotion_is_admitted_for_the_chat_owner_in_the_chat_organization(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """A group limit of organization A binds chats of A only: the same owner's
    chat in organization B (no group limit there, no default) is promoted."""
    conn.execute("SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => NULL)")
    org_a, org_b = factory.org(), factory.org()
    user = factory.user(org_a)
    factory.member(org_b, user)
    factory.group(org_a, limit_micros=LIMIT, members=[user])
    model = factory.model_config()
    in_a = create_chat(conn, user, org_a, model)
    in_b = create_chat(conn, user, org_b, model)
    leases = claim(conn)
    send(conn, user, in_a)
    send(conn, user, in_b)
    factory.message(factory.chat(user, org=org_a, model=model), role="assistant", cost_micros=LIMIT)
    finish(conn, in_a, leases[in_a])
    finish(conn, in_b, leases[in_b])
    assert chat_row(conn, in_a)[0] == "error"
    assert chat_row(conn, in_b) == ("pending", None, 0)


@pytest.mark.usefixtures("limits_on")
def test_worker_role_finishes_a_turn_whose_promotion_is_refused(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """finish_turn runs as chatd_worker, which has no privilege on the spend
    tables: the admission runs inside the SECURITY DEFINER function."""
    _, _, chat, lease = queued_behind_a_running_turn(conn, factory, spent_before=LIMIT)
    with psycopg.connect(as_role(db, "worker"), autocommit=True) as worker:
        finish(worker, chat, lease)
    assert chat_row(conn, chat)[0] == "error"
