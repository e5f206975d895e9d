"""Shared plumbing of the client-side commands (chat, chats, watch, models,
providers, limits): database URL, acting user and organization, output."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from uuid import UUID

import psycopg

from chatd.client import ChatdError, Client
from chatd.protocol import names, queries

__all__ = [
    "DEFAULT_NAME",
    "Identity",
    "add_database_argument",
    "add_identity_arguments",
    "database_url",
    "format_micros",
    "parse_usd",
    "resolve_identity",
    "run_command",
]

#: The user and organization created on first use when none is given.
DEFAULT_NAME = "local"

T = TypeVar("T")


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url", default=None,
        help="PostgreSQL URL (default: $DATABASE_URL, else $CHATD_DATABASE_URL)",
    )


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
        raise SystemExit("chatd: no database: set DATABASE_URL or pass --database-url")
    return url


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
    exit status 1 (2 for usage errors)."""

    async def main() -> int:
        async with await Client.connect(database_url(args), application_name=f"chatd {prog}") as c:
            return await body(c)

    try:
        return asyncio.run(main())
    except ChatdError as exc:
        print(f"chatd {prog}: {exc.message}", file=sys.stderr)
        if exc.detail and exc.sqlstate != names.USAGE_LIMIT_EXCEEDED:
            print(f"  {exc.detail}", file=sys.stderr)
        if exc.hint:
            print(f"  {exc.hint}", file=sys.stderr)
        return 1
    except (psycopg.Error, OSError, TimeoutError) as exc:
        print(f"chatd {prog}: database error: {str(exc).strip() or type(exc).__name__}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
