"""`chatd check` in each state: healthy, database unreachable, migrations
pending or drifted, no live worker, a chat stuck past its lease (docs/cli.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from chatd.cli.common import Exit
from chatd.testing import Factory


def check(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatd", "check", "--database-url", db, *args],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )


def report(db: str, *args: str) -> tuple[int, dict[str, Any]]:
    result = check(db, "--json", *args)
    return result.returncode, json.loads(result.stdout)


@pytest.fixture
def live_worker(conn: psycopg.Connection[Any]) -> str:
    conn.execute("INSERT INTO chatd.workers (id) VALUES ('w1')")
    return "w1"


def test_healthy_with_a_live_worker(db: str, live_worker: str) -> None:
    result = check(db)
    assert (result.returncode, result.stderr) == (Exit.OK, "")
    assert result.stdout.startswith("ok: schema current") and "1 live worker(s)" in result.stdout
    code, body = report(db)
    assert code == Exit.OK
    assert body == {**body, "healthy": True, "status": "ok", "exit_code": 0, "reason": None,
                    "live_workers": 1, "stuck_chats": 0, "oldest_stuck_since": None}
    assert body["migrations"]["not_current"] == []


def test_unreachable_database_exits_3_in_one_line() -> None:
    result = check("postgresql://u:s3cret@127.0.0.1:1/x")
    assert result.returncode == Exit.UNREACHABLE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chatd check: database unreachable")
    assert "s3cret" not in result.stderr
    code, body = report("postgresql://u@127.0.0.1:1/x")
    assert (code, body["status"], body["healthy"]) == (Exit.UNREACHABLE, "unreachable", False)


def test_pending_migration_exits_4(db: str, live_worker: str) -> None:
    down = subprocess.run([sys.executable, "-m", "chatd", "migrate", "down", "7", "--database-url", db],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    result = check(db)
    assert result.returncode == Exit.NOT_CURRENT
    assert "schema not current" in result.stderr and "0008_provider_wire pending" in result.stderr
    code, body = report(db)
    assert (code, body["status"]) == (Exit.NOT_CURRENT, "not_current")


def test_drifted_migration_exits_4(db: str, conn: psycopg.Connection[Any], live_worker: str) -> None:
    conn.execute("UPDATE chatd_meta.migrations SET checksum = 'edited' WHERE version = 1")
    result = check(db)
    assert result.returncode == Exit.NOT_CURRENT
    assert "0001_initial_schema drift" in result.stderr


def test_no_live_worker_exits_5_unless_allowed(db: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO chatd.workers (id, heartbeat_at) VALUES ('gone', now() - interval '1 hour')")
    result = check(db)
    assert result.returncode == Exit.UNHEALTHY
    assert result.stderr.strip() == (
        "chatd check: no live worker (none heartbeated within settings.stale_after)"
    )
    assert check(db, "--allow-no-worker").returncode == Exit.OK


def test_a_chat_stuck_past_its_lease_exits_5(
    db: str, conn: psycopg.Connection[Any], factory: Factory, live_worker: str
) -> None:
    factory.model_config()
    org = factory.org()
    factory.chat(factory.user(org))
    claimed = conn.execute("SELECT count(*) FROM chatd.acquire_chats('dead', 1)").fetchone()
    assert claimed == (1,)
    conn.execute("UPDATE chatd.workers SET heartbeat_at = now() - interval '1 hour' WHERE id = 'dead'")
    result = check(db)
    assert result.returncode == Exit.UNHEALTHY
    assert "1 running chat(s) past their lease" in result.stderr
    code, body = report(db)
    assert (code, body["stuck_chats"], body["live_workers"]) == (Exit.UNHEALTHY, 1, 1)
    assert body["oldest_stuck_since"] is not None
