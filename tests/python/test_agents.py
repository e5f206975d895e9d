"""Sub-agents spawned by the model (issue 14, docs/agents.md): the built-in
tool spawn_agent creates child chats that real workers run; the parent waits
in awaiting_agents (claimed by no worker) and a trigger writes each child's
answer into it as the spawn call's result, resuming it exactly once. Refused
spawns are is_error results the model sees; interrupting or archiving the
parent stops its children; the snapshot and the subscription show the tree."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Jsonb
from worker_support import (
    chat_row,
    messages,
    running_worker,
    status_is,
    text_of,
    wait_until,
    worker_config,
    worker_process,
)

from chatd.client import ChildrenEvent, Client
from chatd.testing import Factory, as_role
from chatd.testing.fakellm import FakeLLM, Hang, HttpError, Text


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def spawn(call_id: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {"id": call_id, "name": "spawn_agent", "input": {"prompt": prompt, **extra}}


def agent_chat(conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, text: str = "plan the trip") -> UUID:
    """A chat whose model may spawn sub-agents, on the fake LLM."""
    org = factory.org()
    owner = factory.user(org=org)
    provider = factory.provider(kind="openai-compat", base_url=fake.openai_base_url)
    model = factory.model_config(provider=provider, input_price=1, output_price=2)
    row = conn.execute(
        "SELECT chatd.create_chat(%s, %s, %s, %s, p_agents => TRUE)", (owner, org, Jsonb(text), model)
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def children(conn: psycopg.Connection[Any], parent: UUID) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT id, status::text, parent_tool_call_id, owner_id, organization_id, root_chat_id, last_error "
        "FROM chatd.chats WHERE parent_chat_id = %s ORDER BY parent_tool_call_id",
        (parent,),
    ).fetchall()
    keys = ("id", "status", "call", "owner", "org", "root", "last_error")
    return [dict(zip(keys, r, strict=True)) for r in rows]


async def results(db: str, chat: UUID) -> dict[str, dict[str, Any]]:
    return {p["tool_call_id"]: p for m in await messages(db, chat, "tool") for p in m["content"]}


async def test_a_parent_spawns_three_children_on_two_workers_and_continues_with_their_answers(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent = agent_chat(conn, factory, fake)
    fake.script(Text("splitting", tool_calls=(
        spawn("a1", "find flights"), spawn("a2", "find hotels"), spawn("a3", "find trains"),
    )), Text("here is the plan"))
    for topic in ("flights", "hotels", "trains"):
        fake.script(Text(f"{topic}: found", delay=0.2), match=f"find {topic}")
    # one turn at a time per worker: three children cannot all run on one
    async with running_worker(worker_config(db, worker_id="w1", max_chats=1)) as w1, \
            running_worker(worker_config(db, worker_id="w2", max_chats=1)) as w2:
        await wait_until(lambda: _answered(db, parent, "here is the plan"), what="the parent's final answer")

        def finished_per_worker() -> list[float]:
            return [w.metrics.registry.get_sample_value("chatd_worker_turns_total", {"outcome": "finished"}) or 0
                    for w in (w1, w2)]

        async def all_counted() -> bool:  # a worker counts a turn just after its commit
            return sum(finished_per_worker()) >= 4

        await wait_until(all_counted, timeout=10, what="the workers to count the four turns")
        finished = finished_per_worker()
    kids = children(conn, parent)
    assert [k["call"] for k in kids] == ["a1", "a2", "a3"]
    assert {k["status"] for k in kids} == {"waiting"}
    assert all((k["owner"], k["org"], k["root"]) == (kids[0]["owner"], kids[0]["org"], parent) for k in kids)
    done = await results(db, parent)
    assert {c: (r["output"], r["is_error"]) for c, r in done.items()} == {
        "a1": ("flights: found", False), "a2": ("hotels: found", False), "a3": ("trains: found", False),
    }
    assert sum(finished) == 4 and min(finished) >= 1, f"turns finished per worker: {finished}"
    # the parent's second request carried all three answers, in its wire's format
    final = [r for r in fake.requests if r.last_user_text == "plan the trip"][-1]
    sent = [m for m in final.messages if m.get("role") == "tool"]
    assert sorted(m["content"] for m in sent) == ["flights: found", "hotels: found", "trains: found"]
    assert (await chat_row(db, parent))["status"] == "waiting"


async def _answered(db: str, chat: UUID, text: str) -> bool:
    return any(text_of(m["content"]) == text for m in await messages(db, chat, "assistant"))


async def test_a_child_in_error_is_an_error_result_and_the_parent_continues(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent = agent_chat(conn, factory, fake)
    fake.script(Text("", tool_calls=(spawn("ok", "easy part"), spawn("bad", "hard part"))), Text("partly done"))
    fake.script(Text("easy: done"), match="easy part")
    fake.script(HttpError(400, message="this request is invalid"), match="hard part")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: _answered(db, parent, "partly done"), what="the parent's final answer")
    done = await results(db, parent)
    assert (done["ok"]["output"], done["ok"]["is_error"]) == ("easy: done", False)
    assert done["bad"]["is_error"] is True
    bad = next(k for k in children(conn, parent) if k["call"] == "bad")
    assert bad["status"] == "error"
    assert str(bad["id"]) in done["bad"]["output"] and "failed" in done["bad"]["output"]
    assert (await chat_row(db, parent))["status"] == "waiting", "a child's failure is not the parent's"


async def test_interrupting_the_parent_stops_its_running_children(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent = agent_chat(conn, factory, fake)
    fake.script(Text("", tool_calls=(spawn("s1", "slow one"), spawn("s2", "slow two"))))
    fake.script(Hang(60), match="slow one")
    fake.script(Hang(60), match="slow two")
    owner = conn.execute("SELECT owner_id FROM chatd.chats WHERE id = %s", (parent,)).fetchone()
    assert owner is not None
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, parent, "awaiting_agents"), what="the parent to await its agents")
        await wait_until(lambda: _all_running(db, conn, parent), what="both children to run")
        assert conn.execute("SELECT chatd.interrupt_chat(%s, %s)", (owner[0], parent)).fetchone() == ("waiting",)
        kids = children(conn, parent)
        assert {k["status"] for k in kids} == {"waiting"}, "the running children were interrupted with it"
        await asyncio.sleep(0)  # the worker sees the lost leases through notifications
    done = await results(db, parent)
    assert {c: (r["is_error"], r["output"]) for c, r in done.items()} == {
        "s1": (True, "cancelled: the chat was interrupted"), "s2": (True, "cancelled: the chat was interrupted"),
    }, "the spawn calls were cancelled; a child's later answer is not written"
    assert (await chat_row(db, parent))["status"] == "waiting"
    assert len(await messages(db, parent, "tool")) == 1


async def _all_running(db: str, conn: psycopg.Connection[Any], parent: UUID) -> bool:
    kids = children(conn, parent)
    return len(kids) == 2 and all(k["status"] == "running" for k in kids)


async def test_archiving_the_parent_archives_and_stops_its_children(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent = agent_chat(conn, factory, fake)
    fake.script(Text("", tool_calls=(spawn("s1", "slow one"),)))
    fake.script(Hang(60), match="slow one")
    owner = conn.execute("SELECT owner_id FROM chatd.chats WHERE id = %s", (parent,)).fetchone()
    assert owner is not None
    async with running_worker(worker_config(db)):
        await wait_until(lambda: _all_running_one(db, conn, parent), what="the child to run")
        assert conn.execute("SELECT chatd.archive_chat(%s, %s)", (owner[0], parent)).fetchone() == (2,)
    rows = conn.execute(
        "SELECT status::text, archived FROM chatd.chats WHERE root_chat_id = %s ORDER BY parent_chat_id NULLS FIRST",
        (parent,),
    ).fetchall()
    assert rows == [("waiting", True), ("waiting", True)]
    assert (await results(db, parent))["s1"]["output"] == "cancelled: the chat was archived"


async def _all_running_one(db: str, conn: psycopg.Connection[Any], parent: UUID) -> bool:
    kids = children(conn, parent)
    return len(kids) == 1 and kids[0]["status"] == "running"


async def test_sigkill_of_the_worker_running_a_child_loses_nothing(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent = agent_chat(conn, factory, fake)
    fake.script(Text("", tool_calls=(spawn("k1", "doomed work"),)), Text("finished after all"))
    fake.script(Hang(60), match="doomed work")
    proc = worker_process(db, "doomed")
    try:
        await wait_until(lambda: _all_running_one(db, conn, parent), what="the child to run")

        async def child_asked() -> bool:  # the hanging reply was taken, not left for the rerun
            return any(r.last_user_text == "doomed work" for r in fake.requests)

        await wait_until(child_asked, what="the child's request to reach the provider")
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (await chat_row(db, parent))["status"] == "awaiting_agents"
    conn.execute("SELECT chatd_test.make_stale('doomed')")
    assert conn.execute("SELECT chatd.recover_stale_chats()").fetchone() == (1,), "the child, not the parent"
    fake.script(Text("the work, redone"), match="doomed work")
    async with running_worker(worker_config(db)):
        await wait_until(lambda: _answered(db, parent, "finished after all"), what="the parent's final answer")
    assert (await results(db, parent))["k1"]["output"] == "the work, redone"
    assert len(children(conn, parent)) == 1, "the spawn was never redone"


# ------------------------------------------------------------ the resume trigger under concurrency


def _awaiting_parent(conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM) -> tuple[UUID, UUID]:
    """A parent in awaiting_agents with two pending children (c1, c2),
    driven through the worker functions by hand. Returns (parent, owner)."""
    parent = agent_chat(conn, factory, fake)
    (chat, lease), = conn.execute(
        "SELECT chat_id, lease FROM chatd.acquire_chats('hand', 1)"
    ).fetchall()
    assert chat == parent
    out = conn.execute(
        "SELECT chatd.commit_tool_step(%s, %s, %s)",
        (parent, lease, Jsonb([
            {"type": "tool-call", "tool_call_id": c, "tool_name": "spawn_agent", "input": {"prompt": c},
             "source": "builtin"} for c in ("c1", "c2")
        ])),
    ).fetchone()
    assert out is not None and out[0]["status"] == "awaiting_agents"
    owner = conn.execute("SELECT owner_id FROM chatd.chats WHERE id = %s", (parent,)).fetchone()
    assert owner is not None
    return parent, owner[0]


def _blocked_on_lock(conn: psycopg.Connection[Any], pid: int) -> bool:
    row = conn.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


def test_two_children_finishing_in_concurrent_transactions_resume_the_parent_once(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent, owner = _awaiting_parent(conn, factory, fake)
    kids = {k["call"]: k["id"] for k in children(conn, parent)}
    with psycopg.connect(db, autocommit=True) as listener, psycopg.connect(db) as first, \
            psycopg.connect(db) as second:
        listener.execute("LISTEN chatd_wake")
        # the first child's answer is written, not committed: it holds the parent
        first.execute("SELECT chatd.interrupt_chat(%s, %s)", (owner, kids["c1"]))
        second_pid = second.info.backend_pid
        done = threading.Event()

        def finish_second() -> None:
            second.execute("SELECT chatd.interrupt_chat(%s, %s)", (owner, kids["c2"]))
            second.commit()
            done.set()

        thread = threading.Thread(target=finish_second)
        thread.start()
        for _ in range(500):  # bounded: the second transaction reaches the parent's lock
            if _blocked_on_lock(conn, second_pid):
                break
            threading.Event().wait(0.01)
        assert _blocked_on_lock(conn, second_pid), "the second child's answer waits for the first's"
        assert (conn.execute("SELECT status::text FROM chatd.chats WHERE id = %s", (parent,)).fetchone()
                == ("awaiting_agents",))
        first.commit()
        thread.join(30)
        assert done.is_set()
        wakes = [n for n in listener.notifies(timeout=1, stop_after=10) if str(parent) in n.payload]
    assert (conn.execute("SELECT status::text FROM chatd.chats WHERE id = %s", (parent,)).fetchone()
            == ("pending",))
    assert len(wakes) == 1, "the parent became runnable exactly once"
    tool_rows = conn.execute(
        "SELECT count(*) FROM chatd.messages WHERE chat_id = %s AND role = 'tool'", (parent,)
    ).fetchone()
    assert tool_rows == (2,), "each child answered once"


def test_the_parent_waits_until_its_last_child_has_answered(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent, owner = _awaiting_parent(conn, factory, fake)
    kids = {k["call"]: k["id"] for k in children(conn, parent)}
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute("LISTEN chatd_wake")
        conn.execute("SELECT chatd.interrupt_chat(%s, %s)", (owner, kids["c1"]))
        assert (conn.execute("SELECT status::text FROM chatd.chats WHERE id = %s", (parent,)).fetchone()
                == ("awaiting_agents",)), "one answer of two: still waiting"
        assert not [n for n in listener.notifies(timeout=0.5, stop_after=10) if str(parent) in n.payload]
        conn.execute("SELECT chatd.interrupt_chat(%s, %s)", (owner, kids["c2"]))
        wakes = [n for n in listener.notifies(timeout=1, stop_after=10) if str(parent) in n.payload]
    assert (conn.execute("SELECT status::text FROM chatd.chats WHERE id = %s", (parent,)).fetchone()
            == ("pending",)) and len(wakes) == 1


def test_a_child_finishing_while_the_parent_still_runs_is_written_and_does_not_resume_it(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent = agent_chat(conn, factory, fake)
    (chat, lease), = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats('hand', 1)").fetchall()
    out = conn.execute(
        "SELECT chatd.commit_tool_step(%s, %s, %s)",
        (parent, lease, Jsonb([
            {"type": "tool-call", "tool_call_id": "k", "tool_name": "spawn_agent", "input": {"prompt": "p"},
             "source": "builtin"},
            {"type": "tool-call", "tool_call_id": "m", "tool_name": "mcp__x__y", "input": {}, "source": "mcp"},
        ])),
    ).fetchone()
    assert out is not None and out[0]["status"] == "running", "the worker still runs the mcp call"
    owner = conn.execute("SELECT owner_id FROM chatd.chats WHERE id = %s", (parent,)).fetchone()
    assert owner is not None
    kid = children(conn, parent)[0]["id"]
    conn.execute("SELECT chatd.interrupt_chat(%s, %s)", (owner[0], kid))
    assert conn.execute("SELECT status::text FROM chatd.chats WHERE id = %s", (parent,)).fetchone() == ("running",)
    last = conn.execute(
        "SELECT chatd.commit_tool_results(%s, %s, %s)",
        (parent, lease, Jsonb([{"tool_call_id": "m", "output": "ok"}])),
    ).fetchone()
    assert last is not None and (last[0]["status"], last[0]["pending"]) == ("running", [])


# ------------------------------------------------------------ refused spawns


def _step(conn: psycopg.Connection[Any], parent: UUID, calls: list[dict[str, Any]]) -> dict[str, Any]:
    (chat, lease), = conn.execute("SELECT chat_id, lease FROM chatd.acquire_chats('hand', 1)").fetchall()
    assert chat == parent
    out = conn.execute(
        "SELECT chatd.commit_tool_step(%s, %s, %s)",
        (parent, lease, Jsonb([
            {"type": "tool-call", "tool_call_id": f"x{i}", "tool_name": "spawn_agent", "input": c,
             "source": "builtin"} for i, c in enumerate(calls)
        ])),
    ).fetchone()
    assert out is not None
    return dict(out[0])


def _refusals(conn: psycopg.Connection[Any], parent: UUID) -> dict[str, str]:
    rows = conn.execute(
        "SELECT p ->> 'tool_call_id', p ->> 'output' FROM chatd.messages AS m, jsonb_array_elements(m.content) AS p "
        "WHERE m.chat_id = %s AND m.role = 'tool' AND (p ->> 'is_error')::boolean",
        (parent,),
    ).fetchall()
    return dict(rows)


@pytest.mark.parametrize(("setup", "call", "reason"), [
    ("", {"prompt": "x", "model": "no-such-model"}, "model no-such-model is unknown or disabled"),
    ("", {"prompt": ""}, "prompt (a non-empty string) is required"),
    ("", {"prompt": "x", "colour": "red"}, "unknown keys colour"),
    ("", {"prompt": "x", "tools": ["secret"]}, "tools secret are not available"),
    ("UPDATE chatd.settings SET max_agent_depth = 0", {"prompt": "x"}, "past depth 0"),
    ("SELECT chatd.admin_set_usage_limits(TRUE, 0, 'month')", {"prompt": "x"}, "spend limit is reached"),
])
def test_a_spawn_that_cannot_run_is_an_error_result_and_the_parent_goes_on(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM, setup: str, call: dict[str, Any],
    reason: str,
) -> None:
    parent = agent_chat(conn, factory, fake)
    if setup:
        conn.execute(setup)
    out = _step(conn, parent, [call])
    assert (out["status"], out["pending"]) == ("running", []), "nothing to wait for: the next step runs"
    refused = _refusals(conn, parent)
    assert list(refused) == ["x0"] and reason in refused["x0"], refused
    assert children(conn, parent) == []


def test_spawns_beyond_the_fan_out_limit_are_refused_and_the_rest_run(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent = agent_chat(conn, factory, fake)
    conn.execute("UPDATE chatd.settings SET max_agent_fanout = 2")
    out = _step(conn, parent, [{"prompt": f"task {i}"} for i in range(3)])
    assert (out["status"], out["pending"]) == ("awaiting_agents", ["x0", "x1"])
    assert "at most 2 sub-agents per step" in _refusals(conn, parent)["x2"]
    assert [k["call"] for k in children(conn, parent)] == ["x0", "x1"]


def test_a_chat_without_agents_is_not_offered_spawn_agent(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent = agent_chat(conn, factory, fake)
    offered = conn.execute("SELECT chatd._turn_tools(%s) -> 'builtin' ->> 0", (parent,)).fetchone()
    assert offered is not None and '"spawn_agent"' in offered[0]
    conn.execute("UPDATE chatd.chats SET agents = FALSE WHERE id = %s", (parent,))
    assert conn.execute("SELECT chatd._turn_tools(%s)", (parent,)).fetchone() == (None,)


# ------------------------------------------------------------ the tree, live


async def test_the_snapshot_and_the_subscription_show_the_children_live(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    parent = agent_chat(conn, factory, fake)
    owner = conn.execute("SELECT owner_id FROM chatd.chats WHERE id = %s", (parent,)).fetchone()
    assert owner is not None
    fake.script(Text("", tool_calls=(spawn("v1", "visible work"),)), Text("all done"))
    fake.script(Text("seen", delay=0.2), match="visible work")
    seen: list[list[tuple[str, str]]] = []
    async with Client(as_role(db, "app")) as client, client.subscribe(owner[0], parent) as sub:
        async with running_worker(worker_config(db)):
            async for event in sub:
                if isinstance(event, ChildrenEvent):
                    seen.append([(c.parent_tool_call_id or "", c.status) for c in event.children])
                    if seen[-1] == [("v1", "waiting")]:
                        break
        snap = await client.snapshot(owner[0], parent)
    assert seen[0][0][0] == "v1" and seen[-1] == [("v1", "waiting")]
    assert ("v1", "running") in [s[0] for s in seen], "the child's run was visible"
    assert [(c.parent_tool_call_id, c.status) for c in snap.children] == [("v1", "waiting")]
