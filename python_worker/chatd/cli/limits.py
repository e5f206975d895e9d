"""`chatd limits show|set`: spend limits (DESIGN.md section 7)."""

from __future__ import annotations

import argparse

from chatd.cli.common import (
    add_database_argument,
    add_identity_arguments,
    add_json_argument,
    fail,
    format_micros,
    parse_usd,
    print_json,
    resolve_identity,
    run_command,
)
from chatd.client import Client
from chatd.protocol import queries

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = """chatd limits show --json
chatd limits set --enable --default 5 --period month
chatd limits set --for-user alice --user-limit 20"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Show or set chat spend limits (amounts in USD)."
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="the configuration and a user's limit and spend")
    add_identity_arguments(show)
    add_json_argument(show)
    st = sub.add_parser(
        "set",
        help="change the configuration (--enable/--disable, --default, --period), "
        "a user's limit (--user-limit with --for-user) or a group's (--group-limit with "
        "--group and --for-org)",
    )
    onoff = st.add_mutually_exclusive_group()
    onoff.add_argument("--enable", dest="enabled", action="store_const", const=True, default=None,
                       help="turn spend limits on (default: unchanged)")
    onoff.add_argument("--disable", dest="enabled", action="store_const", const=False,
                       help="turn spend limits off (default: unchanged)")
    st.add_argument("--default", type=parse_usd, default=None, metavar="USD",
                    help="default limit per period (default: unchanged)")
    st.add_argument("--no-default", action="store_true", help="clear the default limit")
    st.add_argument("--period", choices=["day", "week", "month"], default=None,
                    help="the limit period, in UTC; weeks start Monday (default: unchanged)")
    st.add_argument("--for-user", default=None, metavar="USER",
                    help="user name or id whose --user-limit to set")
    st.add_argument("--user-limit", type=_amount, default=None, metavar="USD|none",
                    help="the user's personal limit, or 'none' to clear it")
    st.add_argument("--group", default=None, help="group name or id whose --group-limit to set")
    st.add_argument("--for-org", default=None, metavar="ORG", help="the group's organization")
    st.add_argument("--group-limit", type=_amount, default=None, metavar="USD|none",
                    help="the group's limit, or 'none' to clear it")
    add_database_argument(st)


def run(args: argparse.Namespace) -> int:
    return run_command(args, lambda client: _limits(client, args), prog="limits")


_CLEAR = -1  # --user-limit none / --group-limit none: clear the limit


def _amount(value: str) -> int:
    """argparse type: USD to micro-dollars, or 'none' (``_CLEAR``)."""
    return _CLEAR if value.strip().lower() == "none" else parse_usd(value)


def _micros(value: int) -> int | None:
    return None if value == _CLEAR else value


async def _limits(client: Client, args: argparse.Namespace) -> int:
    if args.action == "set":
        return await _set(client, args)
    config = await client.fetch(
        queries.USAGE_LIMIT_CONFIG
    )
    enabled, default, period = config[0]
    who = await resolve_identity(client, args)
    rows = await client.fetch(
        queries.USAGE_LIMIT_STATUS,
        [who.user_id, who.organization_id],
    )
    limit, source, spent, start, resets = rows[0]
    if args.json:
        print_json({
            "enabled": enabled, "default_limit_micros": default, "period": period,
            "user_id": who.user_id, "organization_id": who.organization_id,
            "limit_micros": limit, "limit_source": source, "spent_micros": spent,
            "period_start": start.isoformat(), "resets_at": resets.isoformat(),
        })
        return 0
    print(f"limits {'enabled' if enabled else 'disabled'}; default {format_micros(default)} "
          f"per {period}")
    print(f"user {who.user_id} in organization {who.organization_id}:")
    print(f"  limit  {format_micros(limit) if limit is not None else 'none'} ({source})")
    print(f"  spent  {format_micros(spent)} since {start:%Y-%m-%d %H:%M} UTC")
    print(f"  resets {resets:%Y-%m-%d %H:%M} UTC")
    return 0


async def _set(client: Client, args: argparse.Namespace) -> int:
    did = False
    if args.enabled is not None or args.default is not None or args.period or args.no_default:
        await client.fetch(
            queries.SET_USAGE_LIMITS,
            [args.enabled, args.default, args.period, args.no_default],
        )
        did = True
    if args.user_limit is not None:
        if not args.for_user:
            fail("--user-limit needs --for-user")
        await client.fetch(queries.SET_USER_LIMIT,
                           [args.for_user, _micros(args.user_limit)])
        did = True
    if args.group_limit is not None:
        if not (args.group and args.for_org):
            fail("--group-limit needs --group and --for-org")
        await client.fetch(queries.SET_GROUP_LIMIT,
                           [args.for_org, args.group, _micros(args.group_limit)])
        did = True
    if not did:
        fail("nothing to change (see --help)")
    print("ok")
    return 0
