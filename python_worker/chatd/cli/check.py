"""`chatd check`: is this chatd database healthy? For deploy gates, cron and
probes: exit 0 when healthy, else the first problem found as one line and its
exit status (docs/cli.md): 3 the database cannot be reached, 4 migrations
pending or drifted, 5 no live worker or chats stuck past their lease."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC
from typing import Any

import psycopg

from chatd.cli.common import (
    Exit,
    add_database_argument,
    add_json_argument,
    database_url,
    print_json,
)
from chatd.migrate import MigrationError, status
from chatd.protocol import queries

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = """chatd check && echo healthy
chatd check --json --allow-no-worker     # before the first worker starts"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check the database (reachable), the schema (every migration and sql/ file applied, "
        "no drift), the workers (at least one heartbeat within settings.stale_after) and "
        "the running chats (none past its lease). Exit 0 when healthy; otherwise one line "
        "names the first problem and the exit status says which kind."
    )
    parser.add_argument("--allow-no-worker", action="store_true",
                        help="do not fail when no worker is live (default: fail, exit 5)")
    add_json_argument(parser)
    add_database_argument(parser)


def run(args: argparse.Namespace) -> int:
    report = _check(database_url(args), allow_no_worker=args.allow_no_worker)
    code = Exit(report["exit_code"])
    if args.json:
        print_json(report)
    elif code == Exit.OK:
        print(f"ok: {report['detail']}")
    else:
        print(f"chatd check: {report['reason']}", file=sys.stderr)
    return code


def _result(state: str, code: Exit, reason: str | None, **checks: Any) -> dict[str, Any]:
    return {"healthy": code == Exit.OK, "status": state, "exit_code": int(code),
            "reason": reason, **checks}


def _check(url: str, *, allow_no_worker: bool) -> dict[str, Any]:
    try:
        conn = psycopg.connect(url, connect_timeout=5, autocommit=True,
                               application_name="chatd check")
    except psycopg.OperationalError as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        return _result("unreachable", Exit.UNREACHABLE, f"database unreachable: {first}")
    except psycopg.ProgrammingError as exc:
        return _result("usage", Exit.USAGE, f"invalid database URL: {exc}")
    with conn:
        try:
            rows = status(url)
        except MigrationError as exc:
            return _result("failed", Exit.FAILED, f"cannot read the migration ledger: {exc}")
        not_current = [f"{r.name} {r.state}" for r in rows if r.state != "applied"]
        migrations = {"applied": len(rows) - len(not_current), "not_current": not_current}
        if not_current:
            return _result(
                "not_current", Exit.NOT_CURRENT,
                f"schema not current ({len(not_current)}): {', '.join(not_current)}",
                migrations=migrations,
            )
        try:
            health = conn.execute(queries.HEALTH).fetchone()
        except psycopg.Error as exc:
            return _result("failed", Exit.FAILED, f"cannot read chatd.health: {exc}".strip(),
                           migrations=migrations)
    assert health is not None
    live_workers, stuck_chats, oldest_stuck = health
    oldest_stuck = oldest_stuck.astimezone(UTC) if oldest_stuck else None
    checks = {"migrations": migrations, "live_workers": live_workers, "stuck_chats": stuck_chats,
              "oldest_stuck_since": oldest_stuck.isoformat() if oldest_stuck else None}
    if stuck_chats:
        return _result(
            "unhealthy", Exit.UNHEALTHY,
            f"{stuck_chats} running chat(s) past their lease since "
            f"{oldest_stuck:%Y-%m-%d %H:%M:%S} UTC (is any worker recovering?)", **checks)
    if not live_workers and not allow_no_worker:
        return _result("unhealthy", Exit.UNHEALTHY,
                       "no live worker (none heartbeated within settings.stale_after)", **checks)
    detail = (f"schema current ({migrations['applied']} files), {live_workers} live worker(s), "
              "no stuck chats")
    return {**_result("ok", Exit.OK, None, **checks), "detail": detail}
