"""`chatd mcp add|list|remove`: MCP servers whose tools chats may use
(docs/tools.md). A server names the environment variable holding its
token, never the token."""

from __future__ import annotations

import argparse

from chatd.cli.common import Exit, add_database_argument, fail, run_command, table
from chatd.client import Client
from chatd.protocol import queries

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = """chatd mcp add example --command 'python examples/mcp_server.py' --model gpt-4o-mini
chatd mcp add search --url http://127.0.0.1:8765/mcp --secret-env SEARCH_TOKEN
chatd mcp list
chatd mcp remove example"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Register, list or remove MCP servers (tool servers the worker calls)."
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="register a server, or update the one with this name")
    add.add_argument("name", help="1 to 20 of a-z, 0-9 and -; tools are offered as mcp__NAME__TOOL")
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="streamable HTTP endpoint, e.g. http://127.0.0.1:8765/mcp")
    where.add_argument("--command", help="stdio: the command the worker runs, e.g. 'python examples/mcp_server.py'")
    add.add_argument("--secret-env", default=None, metavar="VAR",
                     help="NAME of the worker's environment variable holding the server's bearer token")
    add.add_argument("--model", action="append", default=[], metavar="MODEL",
                     help="enable the server for every chat of this model (repeatable)")
    add.add_argument("--disabled", action="store_true", help="register it disabled")
    add_database_argument(add)
    ls = sub.add_parser("list", help="list servers")
    add_database_argument(ls)
    rm = sub.add_parser("remove", help="remove a server (chats and models no longer see it)")
    rm.add_argument("name", help="the server's name")
    add_database_argument(rm)


def run(args: argparse.Namespace) -> int:
    return run_command(args, lambda client: _mcp(client, args), prog="mcp")


async def _mcp(client: Client, args: argparse.Namespace) -> int:
    if args.action == "add":
        rows = await client.fetch(
            queries.UPSERT_MCP_SERVER, [args.name, args.url, args.command, args.secret_env, not args.disabled]
        )
        for model in args.model:
            await client.fetch(queries.ADD_MODEL_MCP_SERVER, [model, model, args.name])
        print(rows[0][0])
        return 0
    if args.action == "remove":
        rows = await client.fetch(queries.REMOVE_MCP_SERVER, [args.name])
        if not rows[0][0]:
            fail(f"no server named {args.name}", Exit.FAILED)
        return 0
    rows = await client.fetch(queries.LIST_MCP_SERVERS)
    print(table([[r[0], r[1] or r[2], r[3] or "", r[4], ",".join(r[5])] for r in rows],
                ["NAME", "URL OR COMMAND", "SECRET ENV", "ENABLED", "MODELS"]))
    return 0
