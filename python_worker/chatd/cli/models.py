"""`chatd models add|list`: model configurations (prices in USD per million
tokens; one model may be the default)."""

from __future__ import annotations

import argparse
from decimal import Decimal

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

EXAMPLE = """chatd models add ollama llama3.2 --default --input-price 0 --output-price 0
chatd models list --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Add, update or list model configurations."
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="add a model, or update the provider's model of this name")
    add.add_argument("provider", help="provider name or id")
    add.add_argument("model", help="the provider's model name, e.g. gpt-4o-mini")
    add.add_argument("--display-name", default=None, help="name shown to users (default: none)")
    add.add_argument("--context-limit", type=int, default=128000, metavar="TOKENS",
                     help="the model's context window (default 128000)")
    add.add_argument("--max-output-tokens", type=int, default=4096, metavar="TOKENS",
                     help="output budget of one step (default 4096)")
    for bucket in ("input", "output", "cache-read", "cache-write"):
        add.add_argument(f"--{bucket}-price", type=Decimal, default=None, metavar="USD",
                         help=f"USD per million {bucket.replace('-', ' ')} tokens (default: unpriced)")
    add.add_argument("--thinking-budget", type=int, default=None, metavar="TOKENS",
                     help="Anthropic extended thinking with this token budget (at least 1024, "
                     "below --max-output-tokens; default: off)")
    add.add_argument("--agents", action="store_true",
                     help="chats on this model may spawn sub-agents (built-in tool spawn_agent, docs/agents.md)")
    add.add_argument("--default", action="store_true", help="make it the default model")
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    add_database_argument(add)
    ls = sub.add_parser("list", help="list models")
    add_database_argument(ls)
    add_json_argument(ls)


def run(args: argparse.Namespace) -> int:
    return run_command(args, lambda client: _models(client, args), prog="models")


async def _models(client: Client, args: argparse.Namespace) -> int:
    if args.action == "add":
        rows = await client.fetch(
            queries.UPSERT_MODEL,
            [args.provider, args.model, args.display_name, args.context_limit,
             args.max_output_tokens, args.input_price, args.output_price, args.cache_read_price,
             args.cache_write_price, args.default, not args.disabled, args.thinking_budget, args.agents],
        )
        print(rows[0][0])
        return 0
    rows = await client.fetch(
        queries.LIST_MODELS
    )
    keys = ["provider", "model", "display_name", "default", "enabled",
            "input_price_per_mtok", "output_price_per_mtok", "id"]
    if args.json:
        print_json([dict(zip(keys, row, strict=True)) for row in rows])
        return 0
    print(table(
        [[p, m, n, "yes" if d else "", e, " / ".join(format(x.normalize(), "f") for x in (i, o) if x is not None),
          id_] for p, m, n, d, e, i, o, id_ in rows],
        ["PROVIDER", "MODEL", "NAME", "DEFAULT", "ENABLED", "USD/MTOK IN / OUT", "ID"]))
    return 0
