"""Issue 5's acceptance run: 100 chats x 3 turns through real workers and the
fake LLM, with exact message counts (zero duplicates, zero losses)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb
from worker_support import running_worker, wait_until, worker_config

from chatd.testing import Factory
from chatd.testing.fakellm import FakeLLM

CHATS = 100
TURNS = 3


def text(value: str) -> Jsonb:
    return Jsonb([{"type": "text", "text": value}])


async def test_two_workers_run_100_chats_of_3_turns_with_no_duplicate_and_no_loss(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    with FakeLLM() as fake:
        provider = factory.provider(kind="openai-compat", base_url=fake.openai_base_url)
        model = factory.model_config(provider=provider)
        chats: list[UUID] = []
        for n in range(CHATS):
            row = conn.execute(
                "SELECT chatd.create_chat(%s, %s, %s, %s)", (owner, org, text(f"chat{n} turn1"), model)
            ).fetchone()
            assert row is not None
            chats.append(row[0])
        # The next turns are sent at once: they queue behind the running turn
        # and are promoted, in order, by finish_turn.
        for n, chat in enumerate(chats):
            for turn in range(2, TURNS + 1):
                conn.execute("SELECT chatd.send_message(%s, %s, %s)", (owner, chat, text(f"chat{n} turn{turn}")))

        async def all_done() -> bool:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'waiting'), "
                "(SELECT count(*) FROM chatd.queued_messages) FROM chatd.chats"
            ).fetchone()
            return row == (CHATS, 0)

        first = worker_config(db, worker_id="volume-1", max_chats=16)
        second = worker_config(db, worker_id="volume-2", max_chats=16)
        async with running_worker(first), running_worker(second):
            await wait_until(all_done, timeout=240, what=f"{CHATS} chats x {TURNS} turns")

    counts = conn.execute(
        "SELECT role::text, count(*) FROM chatd.messages WHERE NOT deleted GROUP BY role ORDER BY role"
    ).fetchall()
    assert counts == [("assistant", CHATS * TURNS), ("user", CHATS * TURNS)]
    # each answer follows its own question, in order, once
    for n, chat in enumerate(chats):
        history = conn.execute(
            "SELECT role::text, content->0->>'text' FROM chatd.messages WHERE chat_id = %s ORDER BY id",
            (chat,),
        ).fetchall()
        expected: list[tuple[str, str]] = []
        for turn in range(1, TURNS + 1):
            expected += [("user", f"chat{n} turn{turn}"), ("assistant", f"echo: chat{n} turn{turn}")]
        assert history == expected, f"chat {n}"
    assert len(fake.requests) == CHATS * TURNS, "one provider call per turn: nothing ran twice"
