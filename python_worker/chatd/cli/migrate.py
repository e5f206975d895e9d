"""`chatd migrate`: apply, revert, inspect, check or print schema migrations
(the migrator is chatd.migrate)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from chatd.cli.common import Exit, add_json_argument, print_json
from chatd.migrate import (
    DEFAULT_LOCK_TIMEOUT,
    DatabaseUnreachable,
    DriftError,
    MigrationError,
    MigrationFailed,
    apply,
    down,
    export_flyway,
    plan_sql,
    status,
)

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = """chatd migrate --status --json
chatd migrate --check                       # deploy gate: exit 4 when pending or drifted
chatd migrate --print > plan.sql            # review, then psql -v ON_ERROR_STOP=1 -f plan.sql
chatd migrate --print --out flyway/         # V<n>__name.sql files for your own migrator
chatd migrate down 3"""

_LOCK_TIMEOUT = re.compile(r"^(0|[1-9][0-9]*(us|ms|s|min|h)?)$")


def _lock_timeout(value: str) -> str:
    if not _LOCK_TIMEOUT.match(value.strip()):
        raise argparse.ArgumentTypeError(f"not a duration like 5s, 500ms or 0: {value!r}")
    return value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Apply pending migrations, then the repeatable sql/ files whose text changed, "
        "under one advisory lock. `chatd migrate down N` reverts every migration above N."
    )
    parser.add_argument("direction", nargs="?", choices=["up", "down"], default="up",
                        help="up (default) or down")
    parser.add_argument("version", nargs="?", type=int,
                        help="for down: the version to go back to (0 reverts everything)")
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL URL (default: $DATABASE_URL, else $CHATD_DATABASE_URL)")
    parser.add_argument("--to", type=int, metavar="N",
                        help="apply migrations up to version N only (default: the latest)")
    parser.add_argument("--status", action="store_true", help="show applied and pending files")
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 4 when anything is pending, changed or drifted")
    parser.add_argument("--print", dest="print_plan", action="store_true",
                        help="print the plan as SQL for psql -v ON_ERROR_STOP=1 -f; change nothing "
                        "(with a database URL: only what that database still needs)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="with --print: write Flyway-style V<n>__name.sql files (and "
                        "R__chatd_definitions.sql) into DIR instead; reads no database")
    parser.add_argument("--only", type=int, default=None, metavar="N",
                        help="with --print: only migration N, as its V<N>__name.sql file "
                        "(into --out DIR, else on stdout)")
    parser.add_argument("--lock-timeout", type=_lock_timeout, default=DEFAULT_LOCK_TIMEOUT,
                        metavar="DURATION",
                        help="how long each migration step may wait for a lock before it fails "
                        f"(SET LOCAL lock_timeout; 0 waits forever; default {DEFAULT_LOCK_TIMEOUT})")
    add_json_argument(parser)


def _url(args: argparse.Namespace) -> str | None:
    url: str | None = (args.database_url or os.environ.get("DATABASE_URL")
                       or os.environ.get("CHATD_DATABASE_URL"))
    return url


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except DatabaseUnreachable as exc:
        code = Exit.UNREACHABLE
        message = str(exc)
    except DriftError as exc:
        code, message = Exit.NOT_CURRENT, str(exc)
    except MigrationFailed as exc:
        code, message = Exit.FAILED, str(exc)
    except MigrationError as exc:
        code, message = Exit.USAGE, str(exc)
    print(f"chatd migrate: {message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    lock_timeout = None if args.lock_timeout == "0" else args.lock_timeout
    if (args.out or args.only is not None) and not args.print_plan:
        raise MigrationError("--out and --only go with --print")
    if args.direction == "down":
        if args.version is None:
            raise MigrationError("`chatd migrate down N` needs the version N to go back to")
        if args.print_plan:
            print(plan_sql(_url(args), down_to=args.version, lock_timeout=lock_timeout))
        else:
            down(_url(args), args.version, lock_timeout=lock_timeout)
        return Exit.OK
    if args.version is not None:
        raise MigrationError("a version is only taken by `down`; use --to N to migrate up to N")
    if args.status or args.check:
        return _status(args)
    if args.print_plan:
        return _print(args, lock_timeout)
    apply(_url(args), to=args.to, lock_timeout=lock_timeout)
    return Exit.OK


def _print(args: argparse.Namespace, lock_timeout: str | None) -> int:
    if args.out is not None:
        for path in export_flyway(args.out, only=args.only, lock_timeout=lock_timeout):
            print(path)
        return Exit.OK
    if args.only is not None:
        from chatd.migrate import load_sources
        from chatd.migrate.export import flyway_file

        sources = load_sources()
        migration = sources.migration(args.only)
        if migration is None:
            raise MigrationError(f"no migration {args.only:04d} (latest is {sources.latest:04d})")
        sys.stdout.write(flyway_file(migration, lock_timeout))
        return Exit.OK
    print(plan_sql(_url(args), to=args.to, lock_timeout=lock_timeout))
    return Exit.OK


def _status(args: argparse.Namespace) -> int:
    rows = status(_url(args))
    not_current = [r for r in rows if r.state != "applied"]
    if args.json:
        print_json([
            {"kind": r.kind, "name": r.name, "state": r.state,
             "applied_at": r.applied_at.isoformat() if r.applied_at else None}
            for r in rows
        ])
    elif args.status:
        for row in rows:
            when = f"  {row.applied_at:%Y-%m-%d %H:%M:%S}" if row.applied_at else ""
            print(f"{row.state:<13} {row.name}{when}")
        print(f"{len(rows) - len(not_current)} applied, {len(not_current)} not applied")
    if args.check:
        if not_current:
            print("chatd migrate: not current: " + ", ".join(
                f"{r.name} {r.state}" for r in not_current), file=sys.stderr)
            return Exit.NOT_CURRENT
        return Exit.OK
    return Exit.NOT_CURRENT if any(r.state in ("drift", "missing-file") for r in rows) else Exit.OK
