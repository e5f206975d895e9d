"""`chatd chats`: the acting user's chats with their status."""

from __future__ import annotations

import argparse

from chatd.cli.common import add_identity_arguments, resolve_identity, run_command, table
from chatd.client import Client

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "List your chats, most recently updated first."
    parser.add_argument("--all", action="store_true", help="include archived chats")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument("--all-orgs", action="store_true",
                        help="chats of every organization you belong to")
    add_identity_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_command(args, lambda client: _chats(client, args), prog="chats")


async def _chats(client: Client, args: argparse.Namespace) -> int:
    who = await resolve_identity(client, args)
    chats = await client.list_chats(
        who.user_id, None if args.all_orgs else who.organization_id,
        include_archived=args.all, limit=args.limit,
    )
    if not chats:
        print("no chats")
        return 0
    rows = [
        [
            str(c.id),
            c.status + (" (archived)" if c.archived else ""),
            c.updated_at.strftime("%Y-%m-%d %H:%M:%S") if c.updated_at else "",
            (c.title or "")[:60],
            c.last_error.message[:60] if c.last_error and c.status == "error" else "",
        ]
        for c in chats
    ]
    print(table(rows, ["ID", "STATUS", "UPDATED (UTC)", "TITLE", "ERROR"]))
    return 0
