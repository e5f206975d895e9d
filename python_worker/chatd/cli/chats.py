"""`chatd chats`: the acting user's chats with their status."""

from __future__ import annotations

import argparse

from chatd.cli.common import (
    add_identity_arguments,
    add_json_argument,
    print_json,
    resolve_identity,
    run_command,
    table,
)
from chatd.client import Client

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = "chatd chats --limit 10 --json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "List your chats, most recently updated first."
    parser.add_argument("--all", action="store_true", help="include archived chats")
    parser.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    parser.add_argument("--all-orgs", action="store_true",
                        help="chats of every organization you belong to")
    add_identity_arguments(parser)
    add_json_argument(parser)


def run(args: argparse.Namespace) -> int:
    return run_command(args, lambda client: _chats(client, args), prog="chats")


async def _chats(client: Client, args: argparse.Namespace) -> int:
    who = await resolve_identity(client, args)
    chats = await client.list_chats(
        who.user_id, None if args.all_orgs else who.organization_id,
        include_archived=args.all, limit=args.limit,
    )
    if args.json:
        print_json([
            {"id": c.id, "status": c.status, "archived": c.archived, "title": c.title,
             "updated_at": c.updated_at.isoformat() if c.updated_at else None,
             "last_error": c.last_error.message if c.last_error else None}
            for c in chats
        ])
        return 0
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
