"""Shared plumbing of the commands: the exit-code table (`Exit`, `CommandError`),
database URL, acting user and organization, output (tables and --json)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import IntEnum
from typing import Any, NoReturn, TypeVar
from uuid import UUID

import psycopg

from chatd.client import ChatdError, Client
from chatd.protocol import names, queries

__all__ = [
    "DEFAULT_NAME",
    "CommandError",
    "Exit",
    "Identity",
    "add_json_argument",
    "add_database_argument",
    "add_identity_arguments",
    "database_url",
    "fail",
    "format_micros",
    "print_json",
    "read_database_url",
    "preflight",
    "parse_usd",
    "resolve_identity",
    "run_command",
]

#: The user and organization created on first use when none is given.
DEFAULT_NAME = "local"

T = TypeVar("T")


class Exit(IntEnum):
    """The exit status of every `chatd` command, in one place (docs/cli.md)."""

    OK = 0            #: done
    FAILED = 1        #: the operation failed (refused by chatd, a failed turn, a failed migration)
    USAGE = 2         #: bad arguments or input; nothing was attempted
    UNREACHABLE = 3   #: cannot reach or log in to the database
    NOT_CURRENT = 4   #: the schema is not current: migrations pending, drifted or missing
    UNHEALTHY = 5     #: `chatd check`: no live worker, or chats stuck past their lease
    INTERRUPTED = 130  #: Ctrl-C


class CommandError(Exception):
    """Raised by a command to end with one line on stderr and ``code``;
    `chatd.cli.main` prints it as ``chatd <command>: <message>``."""

    def __init__(self, message: str, code: Exit = Exit.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def fail(message: str, code: Exit = Exit.USAGE) -> NoReturn:
    raise CommandError(message, code)


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print JSON instead of a table (default: a table)")


def print_json(value: Any) -> None:
    """One JSON document on stdout (UUIDs, timestamps and decimals as strings)."""
    print(json.dumps(value, default=str, indent=None))


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url", default=None,
        help="PostgreSQL URL (default: $DATABASE_URL, else $CHATD_DATABASE_URL)",
    )
    parser.add_argument(
        "--read-database-url", default=None,
        help="a read replica for chat lists, snapshots and message pages, used while fresh "
        "(default: $CHATD_READ_DATABASE_URL; none: everything reads the primary)",
    )


def read_database_url(args: argparse.Namespace) -> str | None:
    """The read replica's URL, if one is configured (flag, then environment)."""
    return getattr(args, "read_database_url", None) or os.environ.get("CHATD_READ_DATABASE_URL") or None


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_argument(parser)
    parser.add_argument(
        "--user", default=None,
        help="acting user, name or id (default: $CHATD_USER, else the local user "
        f"{DEFAULT_NAME!r}, created on first use)",
    )
    parser.add_argument(
        "--org", default=None,
        help="organization, name or id (default: $CHATD_ORG, else the user's only organization, "
        f"or {DEFAULT_NAME!r} for the local user)",
    )


def database_url(args: argparse.Namespace) -> str:
    url = (
        getattr(args, "database_url", None)
        or os.environ.get("DATABASE_URL")
        or os.environ.get("CHATD_DATABASE_URL")
    )
    if not url:
        fail("no database: set DATABASE_URL (or CHATD_DATABASE_URL) or pass --database-url")
    return str(url)


async def preflight(url: str) -> None:
    """One connection attempt, so a dead database is one line and exit 3
    (instead of a pool retrying, and warning, until its timeout)."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=5)
    except psycopg.OperationalError as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise CommandError(f"cannot reach the database: {first}", Exit.UNREACHABLE) from exc
    except psycopg.ProgrammingError as exc:
        raise CommandError(f"invalid database URL: {exc}", Exit.USAGE) from exc
    await conn.close()


@dataclass(frozen=True)
class Identity:
    user_id: UUID
    organization_id: UUID


async def resolve_identity(client: Client, args: argparse.Namespace) -> Identity:
    """The acting user and organization: flags, then CHATD_USER / CHATD_ORG,
    else the local user and organization, created on first use."""
    user = getattr(args, "user", None) or os.environ.get("CHATD_USER") or None
    org = getattr(args, "org", None) or os.environ.get("CHATD_ORG") or None
    create = user is None
    if user is None:
        user = DEFAULT_NAME
        org = org or DEFAULT_NAME
    rows = await client.fetch(
        queries.RESOLVE_IDENTITY,
        [user, org, create],
    )
    return Identity(rows[0][0], rows[0][1])


def parse_usd(value: str) -> int:
    """Dollars (e.g. "12.50") to micro-dollars; argparse type."""
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not an amount in USD: {value!r}") from exc
    if amount < 0:
        raise argparse.ArgumentTypeError("an amount cannot be negative")
    return int((amount * 1_000_000).to_integral_value())


def format_micros(micros: int | None) -> str:
    if micros is None:
        return "-"
    return f"${Decimal(micros) / 1_000_000:.6f}".rstrip("0").rstrip(".") if micros else "$0"


def run_command(
    args: argparse.Namespace, body: Callable[[Client], Awaitable[int]], *, prog: str
) -> int:
    """Open a client, run ``body``, and turn chatd errors into a message and
    an `Exit` status (1 when chatd refused, 3 when the database is unreachable)."""

    async def main() -> int:
        url = database_url(args)
        await preflight(url)
        async with await Client.connect(
            url, application_name=f"chatd {prog}", read_dsn=read_database_url(args)
        ) as c:
            return await body(c)

    try:
        return asyncio.run(main())
    except ChatdError as exc:
        print(f"chatd {prog}: {exc.message}", file=sys.stderr)
        if exc.detail and exc.sqlstate != names.USAGE_LIMIT_EXCEEDED:
            print(f"  {exc.detail}", file=sys.stderr)
        if exc.hint:
            print(f"  {exc.hint}", file=sys.stderr)
        return Exit.FAILED
    except psycopg.OperationalError as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        print(f"chatd {prog}: database error: {first}", file=sys.stderr)
        return Exit.UNREACHABLE
    except (psycopg.Error, OSError, TimeoutError) as exc:
        print(f"chatd {prog}: database error: {str(exc).strip() or type(exc).__name__}",
              file=sys.stderr)
        return Exit.FAILED


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
