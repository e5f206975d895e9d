"""`chatd providers add|list`: LLM providers (the API key stays in the
environment: a provider names the variable that holds it)."""

from __future__ import annotations

import argparse

from chatd.cli.common import (
    add_database_argument,
    add_json_argument,
    print_json,
    run_command,
    table,
)
from chatd.client import Client
from chatd.protocol import queries

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = """chatd providers add ollama --kind openai-compat --base-url http://localhost:11434/v1
chatd providers add openai --kind openai --api-key-env OPENAI_API_KEY
chatd providers list --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Add, update or list LLM providers."
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="add a provider, or update the one with this name")
    add.add_argument("name", help="unique provider name")
    add.add_argument("--kind", required=True, choices=["openai", "openai-compat", "anthropic"],
                     help="the API the provider speaks (required)")
    add.add_argument("--base-url", default=None,
                     help="API base URL (required for openai-compat, e.g. http://localhost:11434/v1)")
    add.add_argument("--api-key-env", default=None, metavar="VAR",
                     help="NAME of the environment variable holding the API key, e.g. OPENAI_API_KEY")
    add.add_argument("--auth-header", default=None, choices=["bearer", "x-api-key"],
                     help="how to send the key: 'Authorization: Bearer' or 'x-api-key' "
                     "(default: what the kind's API documents; for gateways that want the other)")
    add.add_argument("--no-stream-usage", action="store_true",
                     help="Chat Completions server that rejects or ignores stream_options: "
                     "send none and estimate usage (about 4 characters a token)")
    add.add_argument("--api", default=None, choices=["chat_completions", "responses", "messages"],
                     help="the HTTP API: chat_completions or responses (OpenAI Responses API) for "
                     "the OpenAI kinds, messages for anthropic (default: chat_completions / messages)")
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    add_database_argument(add)
    ls = sub.add_parser("list", help="list providers")
    add_database_argument(ls)
    add_json_argument(ls)


def run(args: argparse.Namespace) -> int:
    return run_command(args, lambda client: _providers(client, args), prog="providers")


async def _providers(client: Client, args: argparse.Namespace) -> int:
    if args.action == "add":
        rows = await client.fetch(
            queries.UPSERT_PROVIDER,
            [args.name, args.kind, args.base_url, args.api_key_env, not args.disabled,
             args.auth_header, False if args.no_stream_usage else None, args.api],
        )
        print(rows[0][0])
        return 0
    rows = await client.fetch(
        queries.LIST_PROVIDERS
    )
    keys = ["name", "kind", "base_url", "api_key_env", "enabled", "auth_header", "api", "id"]
    if args.json:
        print_json([dict(zip(keys, row, strict=True)) for row in rows])
        return 0
    print(table([list(r) for r in rows], ["NAME", "KIND", "BASE URL", "KEY ENV", "ENABLED", "AUTH HEADER", "API", "ID"]))
    return 0
