"""The worker's hot scans use their partial indexes, by the planner's own choice.

The query text is read from the installed functions (pg_proc.prosrc), so the
test checks exactly what acquire_chats() and recover_stale_chats() run. Their
PL/pgSQL variables become parameters of a prepared statement, as PL/pgSQL
does; both the custom plan and the generic plan (what PL/pgSQL switches to
after a few calls) are checked. No planner switch is turned off: the table
holds a few thousand chats, mostly idle, and is ANALYZEd, so the index wins on
cost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from chatd.testing import Factory

CHATS = 5000
RUNNING = 100
PENDING = 50


def function_query(conn: psycopg.Connection[Any], function: str, cte: str) -> str:
    row = conn.execute(
        "SELECT p.prosrc FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'chatd' AND p.proname = %s",
        (function,),
    ).fetchone()
    assert row is not None, f"chatd.{function} is not installed"
    match = re.search(rf"\b{cte} AS \(\s*(SELECT .*?FOR UPDATE SKIP LOCKED)\s*\)", row[0], re.S | re.I)
    assert match, f"no `{cte} AS (SELECT ... FOR UPDATE SKIP LOCKED)` in chatd.{function}"
    return match.group(1)


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def chats_scans(conn: psycopg.Connection[Any], statement: str, args: str) -> list[tuple[str, str | None]]:
    """(node type, index name) of every scan of chatd.chats in the plan of EXECUTE."""
    rows = conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE {statement}({args})").fetchone()
    assert rows is not None
    document = rows[0] if isinstance(rows[0], list) else json.loads(rows[0])
    return [
        (node["Node Type"], node.get("Index Name"))
        for node in plan_nodes(document[0]["Plan"])
        if node.get("Relation Name") == "chats"
    ]


@pytest.fixture
def busy_table(conn: psycopg.Connection[Any], factory: Factory) -> psycopg.Connection[Any]:
    """CHATS chats: RUNNING running, PENDING pending, the rest waiting; analyzed."""
    org = factory.org()
    owner = factory.user(org=org)
    model = factory.model_config()
    conn.execute(
        "INSERT INTO chatd.chats (id, organization_id, owner_id, root_chat_id, model_config_id) "
        "SELECT g.id, %s, %s, g.id, %s FROM (SELECT gen_random_uuid() AS id "
        "FROM generate_series(1, %s)) AS g",
        (org, owner, model, CHATS),
    )
    claimed = conn.execute("SELECT count(*) FROM chatd.acquire_chats('plan-worker', %s)", (RUNNING,)).fetchone()
    assert claimed == (RUNNING,)
    conn.execute(
        "UPDATE chatd.chats SET status = 'waiting' WHERE id IN ("
        "SELECT id FROM chatd.chats WHERE status = 'pending' ORDER BY id OFFSET %s)",
        (PENDING,),
    )
    counts = dict(conn.execute("SELECT status::text, count(*) FROM chatd.chats GROUP BY 1").fetchall())
    assert counts == {"running": RUNNING, "pending": PENDING, "waiting": CHATS - RUNNING - PENDING}
    conn.execute("ANALYZE chatd.chats")
    return conn


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
def test_claim_scan_uses_the_runnable_partial_index(
    busy_table: psycopg.Connection[Any], plan_cache_mode: str
) -> None:
    conn = busy_table
    query = function_query(conn, "acquire_chats", "candidates")
    assert "p_limit" in query
    conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
    # v_disabled: the disabled model configs (usually none), excluded from the claim
    conn.execute(
        f"PREPARE claim_scan(integer, uuid[]) AS {query.replace('p_limit', '$1').replace('v_disabled', '$2')}"
    )
    scans = chats_scans(conn, "claim_scan", "10, ARRAY[gen_random_uuid()]")
    assert scans, "the plan reads chatd.chats"
    assert all(index == "chats_runnable_idx" for _, index in scans), scans


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
def test_chats_on_disabled_models_are_found_through_the_runnable_partial_index(
    busy_table: psycopg.Connection[Any], plan_cache_mode: str
) -> None:
    conn = busy_table
    query = function_query(conn, "_fail_disabled_model_chats", "refused")
    assert "v_disabled" in query
    conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
    conn.execute(f"PREPARE refused_scan(uuid[]) AS {query.replace('v_disabled', '$1')}")
    scans = chats_scans(conn, "refused_scan", "ARRAY[gen_random_uuid()]")
    assert scans, "the plan reads chatd.chats"
    assert all(index == "chats_runnable_idx" for _, index in scans), scans


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
def test_stale_workers_chats_are_found_through_the_running_worker_partial_index(
    busy_table: psycopg.Connection[Any], plan_cache_mode: str
) -> None:
    conn = busy_table
    query = function_query(conn, "recover_stale_chats", "of_stale_workers")
    assert "v_workers" in query
    conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
    conn.execute(f"PREPARE stale_scan(text[]) AS {query.replace('v_workers', '$1')}")
    scans = chats_scans(conn, "stale_scan", "ARRAY['plan-worker']")
    assert scans, "the plan reads chatd.chats"
    assert all(index == "chats_running_worker_idx" for _, index in scans), scans


@pytest.mark.parametrize("plan_cache_mode", ["force_custom_plan", "force_generic_plan"])
def test_chats_without_a_worker_row_are_found_through_the_running_heartbeat_partial_index(
    busy_table: psycopg.Connection[Any], plan_cache_mode: str
) -> None:
    conn = busy_table
    query = function_query(conn, "recover_stale_chats", "without_worker")
    assert "v_settings.stale_after" in query
    conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
    conn.execute(f"PREPARE orphan_scan(interval) AS {query.replace('v_settings.stale_after', '$1')}")
    scans = chats_scans(conn, "orphan_scan", "'30 seconds'")
    assert scans, "the plan reads chatd.chats"
    assert all(index == "chats_running_heartbeat_idx" for _, index in scans), scans
