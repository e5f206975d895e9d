"""`chatd token issue`: a signed development JWT for `chatd serve`."""

from __future__ import annotations

import argparse
import os
from uuid import UUID

from chatd.cli.common import Exit, add_identity_arguments, fail, resolve_identity, run_command
from chatd.client import Client

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = """CHATD_JWT_SECRET=dev-secret chatd token issue --user alice --org acme --ttl 600"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Print a bearer token for chatd serve, signed with $CHATD_JWT_SECRET (HS256). "
        "--user and --org take ids, or names resolved in the database."
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = sub.add_parser("issue", help="print a signed token")
    add_identity_arguments(issue)
    issue.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    issue.add_argument("--secret", default=None, help="signing secret (default: $CHATD_JWT_SECRET)")


def _uuid(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None


def run(args: argparse.Namespace) -> int:
    from chatd.http.auth import issue_token

    secret = args.secret or os.environ.get("CHATD_JWT_SECRET", "")
    if not secret:
        fail("no secret: set CHATD_JWT_SECRET or pass --secret")
    if args.ttl <= 0:
        fail("--ttl must be positive")
    user, org = _uuid(args.user), _uuid(args.org)
    if user is not None and (org is not None or not args.org):
        print(issue_token(user, org, secret=secret, ttl_seconds=args.ttl))
        return Exit.OK

    async def resolved(client: Client) -> int:
        who = await resolve_identity(client, args)
        print(issue_token(who.user_id, who.organization_id, secret=secret, ttl_seconds=args.ttl))
        return Exit.OK

    return run_command(args, resolved, prog="token")
