"""`chatd migrate`: apply, revert, inspect or print schema migrations (the
migrator is chatd.migrate)."""

from __future__ import annotations

import argparse
import os
import sys

from chatd.migrate import MigrationError, apply, down, plan_sql, status

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Apply pending migrations, then the repeatable sql/ files whose text changed, "
        "under one advisory lock. `chatd migrate down N` reverts every migration above N."
    )
    parser.add_argument("direction", nargs="?", choices=["up", "down"], default="up",
                        help="up (default) or down")
    parser.add_argument("version", nargs="?", type=int,
                        help="for down: the version to go back to (0 reverts everything)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="PostgreSQL URL (default: $DATABASE_URL)")
    parser.add_argument("--to", type=int, metavar="N", help="apply migrations up to version N only")
    parser.add_argument("--status", action="store_true", help="show applied and pending files")
    parser.add_argument("--print", dest="print_plan", action="store_true",
                        help="print the plan as SQL for psql -v ON_ERROR_STOP=1 -f; change nothing")


def run(args: argparse.Namespace) -> int:
    try:
        if args.direction == "down":
            if args.version is None:
                raise MigrationError("`chatd migrate down N` needs the version N to go back to")
            if args.print_plan:
                print(plan_sql(args.database_url, down_to=args.version))
            else:
                down(args.database_url, args.version)
            return 0
        if args.version is not None:
            raise MigrationError("a version is only taken by `down`; use --to N to migrate up to N")
        if args.status:
            rows = status(args.database_url)
            for row in rows:
                when = f"  {row.applied_at:%Y-%m-%d %H:%M:%S}" if row.applied_at else ""
                print(f"{row.state:<13} {row.name}{when}")
            pending = sum(r.state != "applied" for r in rows)
            print(f"{len(rows) - pending} applied, {pending} not applied")
            return 1 if any(r.state in ("drift", "missing-file") for r in rows) else 0
        if args.print_plan:
            print(plan_sql(args.database_url, to=args.to))
            return 0
        apply(args.database_url, to=args.to)
        return 0
    except MigrationError as exc:
        print(f"chatd migrate: {exc}", file=sys.stderr)
        return 2
