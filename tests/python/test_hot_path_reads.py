"""The dispatch path reads what it works on, not the tables around it.

Each test runs one call over a few thousand chats with a message each and
reads what it read from pg_stat_xact_user_tables (the difference across the
call: the view also holds counts of this session not yet flushed): no
sequential scan, and a number of fetched rows
bounded by the chats it handles, whatever the tables hold (docs/benchmarks.md,
"Dispatch, second pass": each of these was a plan that read a whole table).
No timing is asserted.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import psycopg
import pytest

from chatd.testing import Factory

CHATS = 3000


def counters(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """(rows read by sequential scans, rows fetched through indexes) of chats and messages so far."""
    rows = conn.execute(
        "SELECT relname, seq_tup_read, idx_tup_fetch FROM pg_stat_xact_user_tables "
        "WHERE schemaname = 'chatd' AND relname IN ('chats', 'messages')"
    ).fetchall()
    return {name: (int(seq), int(fetched)) for name, seq, fetched in rows}


class Reads:
    """What the statements run inside ``with Reads(conn) as r:`` read: r.chats, r.messages."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def __enter__(self) -> Reads:
        self.before = counters(self.conn)
        return self

    def __exit__(self, *exc: object) -> None:
        after = counters(self.conn)

        def delta(table: str) -> tuple[int, int]:
            b, a = self.before.get(table, (0, 0)), after.get(table, (0, 0))
            return a[0] - b[0], a[1] - b[1]

        self.chats, self.messages = delta("chats"), delta("messages")


@pytest.fixture
def backlog(conn: psycopg.Connection[Any], factory: Factory) -> tuple[UUID, UUID]:
    """CHATS pending chats, all due at the same moment, one user message each; analyzed."""
    org = factory.org()
    owner = factory.user(org=org)
    model = factory.model_config()
    conn.execute(
        "INSERT INTO chatd.chats (id, organization_id, owner_id, root_chat_id, model_config_id) "
        "SELECT g.id, %s, %s, g.id, %s FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, %s)) AS g",
        (org, owner, model, CHATS),
    )
    conn.execute(
        "INSERT INTO chatd.messages (chat_id, role, content) "
        """SELECT c.id, 'user', '[{"type": "text", "text": "hello"}]' FROM chatd.chats AS c"""
    )
    conn.execute("ANALYZE chatd.chats")
    conn.execute("ANALYZE chatd.messages")
    return owner, org


def test_a_claim_reads_neither_the_backlog_nor_other_chats_messages(
    conn: psycopg.Connection[Any], backlog: tuple[UUID, UUID]
) -> None:
    with conn.transaction(), Reads(conn) as r:
        claimed = conn.execute("SELECT chat_id, messages FROM chatd.acquire_chats('reader', 5)").fetchall()
    chats, messages = r.chats, r.messages
    assert len(claimed) == 5 and all(len(m) == 1 for _, m in claimed)
    assert chats[0] == 0 and messages[0] == 0, f"sequential scans: chats {chats}, messages {messages}"
    # 5 claimed chats: the rows locked and updated, not the 3,000 waiting
    assert chats[1] <= 50, f"a claim of 5 fetched {chats[1]} chat rows of a backlog of {CHATS}"
    assert messages[1] <= 50, f"a claim of 5 one-message chats fetched {messages[1]} message rows"


def test_finishing_a_batch_reads_only_its_chats(conn: psycopg.Connection[Any], backlog: tuple[UUID, UUID]) -> None:
    claimed = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats('reader', 5)").fetchall()
    batch = [
        {"chat_id": str(chat), "lease": lease, "content": "done", "usage": {"input_tokens": 3, "output_tokens": 1},
         "runtime_ms": 1, "finish_reason": "stop"}
        for chat, lease in claimed
    ]
    with conn.transaction(), Reads(conn) as r:
        finished = conn.execute("SELECT message_id FROM chatd.finish_turns(%s)", (json.dumps(batch),)).fetchall()
    chats = r.chats
    assert len(finished) == 5 and all(m is not None for (m,) in finished)
    assert chats[0] == 0, f"finish_turns read {chats[0]} chat rows by sequential scan"
    assert chats[1] <= 50, f"a batch of 5 fetched {chats[1]} chat rows"


def test_a_snapshot_and_the_turn_history_read_only_their_chats_messages(
    conn: psycopg.Connection[Any], backlog: tuple[UUID, UUID]
) -> None:
    owner, _ = backlog
    [(chat, lease)] = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats('reader', 1)").fetchall()
    with conn.transaction(), Reads(conn) as r:
        conn.execute("SELECT chatd.get_chat_snapshot(%s, %s)", (owner, chat))
    snapshot = r.messages
    with conn.transaction(), Reads(conn) as r:
        rows = conn.execute(
            "SELECT id FROM chatd.turn_history('reader', %s, %s, 0, 100)", (chat, lease)
        ).fetchall()
    history = r.messages
    assert len(rows) == 1
    assert snapshot[0] == 0 and history[0] == 0, f"sequential scans: snapshot {snapshot}, history {history}"
    assert snapshot[1] <= 10 and history[1] <= 10, f"rows fetched: snapshot {snapshot}, history {history}"
