"""The spend ledger stays exact (docs/spend-limits.md, "The spend ledger").

Property: after any sequence of turns driven through the real SQL functions
(create_chat, send_message, acquire_chats, finish_turn, finish_turns,
interrupt_chat + save_interrupted_turn, record_failure, edit_message,
delete_chat, recover_stale_chats), chatd.spend_ledger equals the sum over
the priced messages per (owner, UTC day, organization), and every user's
usage_limit_status equals a scan of their messages. The sequences are
random but seeded (reproducible) and bounded. Actions that the state
machine refuses (a finish under a lost lease, an edit of a busy chat, an
admission over the limit) are part of the sequence: they must leave the
ledger exact too.

Contention: concurrent finishes of one user on one day update one ledger
row, but only at commit (the trigger is deferred): a finish whose
transaction is open holds no ledger lock, so another commits past it (an
explicit interleaving with two connections; nothing sleeps).
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import psycopg
import pytest

from chatd.testing import Factory

WORKER = "w-ledger"
SEEDS = range(8)
STEPS = 80

LEDGER_MISMATCH = """
WITH expected AS (
    SELECT ch.owner_id AS user_id, (m.created_at AT TIME ZONE 'UTC')::date AS day, ch.organization_id,
        sum(m.total_cost_micros) AS spent_micros, count(*) AS priced_messages
    FROM chatd.messages AS m INNER JOIN chatd.chats AS ch ON ch.id = m.chat_id
    WHERE m.total_cost_micros IS NOT NULL
    GROUP BY 1, 2, 3
), ledger AS (
    SELECT l.user_id, l.day, l.organization_id, l.spent_micros, l.priced_messages
    FROM chatd.spend_ledger AS l WHERE l.spent_micros <> 0 OR l.priced_messages <> 0
)
SELECT count(*) FROM ((SELECT * FROM expected EXCEPT ALL SELECT * FROM ledger)
    UNION ALL (SELECT * FROM ledger EXCEPT ALL SELECT * FROM expected)) AS d
"""

SCANNED_SPEND = """
SELECT coalesce(sum(m.total_cost_micros), 0)::bigint
FROM chatd.messages AS m INNER JOIN chatd.chats AS ch ON ch.id = m.chat_id
CROSS JOIN chatd.spend_current_period AS p
WHERE ch.owner_id = %s AND m.created_at >= p.period_start AND m.created_at < p.resets_at
"""


def usage(rng: random.Random) -> dict[str, int]:
    return {"input_tokens": rng.randint(0, 400), "output_tokens": rng.randint(0, 400)}


class Scenario:
    """Two users, two organizations, a priced and an unpriced model, chats."""

    def __init__(self, conn: psycopg.Connection[Any], factory: Factory, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        org_a, org_b = factory.org(), factory.org()
        self.users = [factory.user(org_a), factory.user(org_b)]
        factory.member(org_b, self.users[0])
        priced = factory.model_config()
        unpriced = factory.model_config(input_price=None, output_price=None)
        self.chats: list[tuple[uuid.UUID, uuid.UUID]] = []
        for user, org in ((self.users[0], org_a), (self.users[0], org_b), (self.users[1], org_b)):
            for model in (priced, priced, unpriced):
                row = self.call(
                    "SELECT chatd.create_chat(%s, %s, '\"first\"', p_model_config_id => %s)", (user, org, model)
                )
                if row is not None:
                    self.chats.append((user, row[0]))
        self.leases: dict[uuid.UUID, int] = {}

    def call(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        """Runs one statement in its own transaction; a refusal is an outcome."""
        try:
            with self.conn.transaction():
                return self.conn.execute(query, params).fetchone()
        except psycopg.Error:
            return None

    def step(self) -> None:
        rng = self.rng
        user, chat = rng.choice(self.chats)
        lease = self.leases.get(chat, 0)
        action = rng.choice(
            ["send", "claim", "finish", "finish", "finish_many", "interrupt", "fail", "edit", "delete", "recover"]
        )
        if action == "send":
            self.call("SELECT chatd.send_message(%s, %s, '\"more\"')", (user, chat))
        elif action == "claim":
            for row in self.conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats(%s, 10)", (WORKER,)):
                self.leases[row[0]] = row[1]
        elif action == "finish":
            self.call(
                "SELECT chatd.finish_turn(%s, %s, '\"answer\"', %s)", (chat, lease, json.dumps(usage(rng)))
            )
        elif action == "finish_many":
            batch = [
                {"chat_id": str(c), "lease": lease_of, "content": "batched", "usage": usage(rng)}
                for c, lease_of in self.leases.items()
            ]
            self.call("SELECT chatd.finish_turns(%s)", (json.dumps(batch),))
        elif action == "interrupt":
            self.call("SELECT chatd.interrupt_chat(%s, %s)", (user, chat))
            self.call(
                "SELECT chatd.save_interrupted_turn(%s, %s, '\"partial\"', %s)", (chat, lease, json.dumps(usage(rng)))
            )
        elif action == "fail":
            error = {"message": "upstream 503", "kind": "provider", "retryable": True}
            self.call("SELECT chatd.record_failure(%s, %s, %s, 0)", (chat, lease, json.dumps(error)))
        elif action == "edit":
            row = self.call(
                "SELECT id FROM chatd.messages WHERE chat_id = %s AND role = 'user' AND NOT deleted "
                "ORDER BY id LIMIT 1",
                (chat,),
            )
            if row is not None:
                self.call("SELECT chatd.edit_message(%s, %s, %s, '\"edited\"')", (user, chat, row[0]))
        elif action == "delete":
            if rng.random() < 0.3:
                self.call("SELECT chatd.delete_chat(%s, %s)", (user, chat))
        elif action == "recover":
            # the worker stopped: its claims look older than stale_after
            self.call(
                "UPDATE chatd.chats SET heartbeat_at = now() - interval '1 day' WHERE status = 'running'"
            )
            self.call("DELETE FROM chatd.workers")
            self.call("SELECT chatd.recover_stale_chats()")


@pytest.mark.parametrize("seed", SEEDS)
def test_ledger_equals_the_sum_over_messages_after_random_turns(
    conn: psycopg.Connection[Any], factory: Factory, seed: int
) -> None:
    rng = random.Random(seed)
    limit = rng.choice([None, 3_000, 50_000])
    conn.execute("SELECT chatd_test.spend_config(p_enabled => TRUE, p_default_limit_micros => %s)", (limit,))
    conn.commit()
    conn.autocommit = True
    scenario = Scenario(conn, factory, rng)
    for step in range(STEPS):
        scenario.step()
        mismatch = conn.execute(LEDGER_MISMATCH).fetchone()
        assert mismatch == (0,), f"seed {seed}: the ledger differs from the messages after step {step}"
    priced = conn.execute("SELECT count(*) FROM chatd.messages WHERE total_cost_micros > 0").fetchone()
    assert priced is not None and priced[0] > 0, f"seed {seed}: the sequence recorded no spend"
    for user in scenario.users:
        status = conn.execute("SELECT spent_micros FROM chatd.usage_limit_status(%s)", (user,)).fetchone()
        assert status == conn.execute(SCANNED_SPEND, (user,)).fetchone()


def running_chat(conn: psycopg.Connection[Any], user: uuid.UUID, org: uuid.UUID, model: uuid.UUID) -> tuple[uuid.UUID, int]:
    row = conn.execute(
        "SELECT chatd.create_chat(%s, %s, '\"first\"', p_model_config_id => %s)", (user, org, model)
    ).fetchone()
    assert row is not None
    claimed = conn.execute(
        "SELECT lease FROM chatd.acquire_chats(%s, 10) WHERE chat_id = %s", (WORKER, row[0])
    ).fetchone()
    assert claimed is not None
    return row[0], claimed[0]


def test_concurrent_finishes_of_one_user_do_not_wait_for_each_others_transactions(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """The ledger trigger is deferred to commit: a finish whose transaction
    is still open holds no ledger row, so another finish of the same user
    commits without waiting for it (with an immediate trigger it waited on
    the row lock until the first one committed)."""
    org = factory.org()
    user = factory.user(org)
    model = factory.model_config()
    first = running_chat(conn, user, org, model)
    second = running_chat(conn, user, org, model)
    conn.commit()
    finish = "SELECT chatd.finish_turn(%s, %s, '\"answer\"', '{\"input_tokens\": 100}')"
    with psycopg.connect(db) as holder, psycopg.connect(db) as other:
        holder.execute(finish, first)  # open, not committed
        other.execute("SET lock_timeout = '5s'")  # a wait would fail the test, not hang it
        other.execute(finish, second)
        other.commit()
        assert conn.execute(
            "SELECT spent_micros, priced_messages FROM chatd.spend_ledger WHERE user_id = %s", (user,)
        ).fetchone() == (100, 1)
        conn.commit()
        holder.commit()
    spent = conn.execute(
        "SELECT spent_micros, priced_messages FROM chatd.spend_ledger WHERE user_id = %s", (user,)
    ).fetchone()
    assert spent == (200, 2)


def test_a_chat_hard_deleted_in_the_transaction_that_priced_its_message_leaves_the_ledger_exact(
    conn: psycopg.Connection[Any], factory: Factory
) -> None:
    """The priced message's ledger write is deferred to commit, and by then
    its chat is gone; the chat's delete trigger fires the pending ledger
    writes first, so the cost is added and then subtracted."""
    org = factory.org()
    user = factory.user(org)
    model = factory.model_config()
    keep = running_chat(conn, user, org, model)
    gone = running_chat(conn, user, org, model)
    finish = "SELECT chatd.finish_turn(%s, %s, '\"answer\"', '{\"input_tokens\": 100}')"
    conn.execute(finish, keep)  # committed: the ledger row of (user, today, org) exists
    with conn.transaction():
        conn.execute(finish, gone)
        conn.execute("DELETE FROM chatd.chats WHERE id = %s", (gone[0],))
    assert conn.execute(LEDGER_MISMATCH).fetchone() == (0,)
    assert conn.execute(
        "SELECT spent_micros, priced_messages FROM chatd.spend_ledger WHERE user_id = %s", (user,)
    ).fetchone() == (100, 1)
