"""`chatd spend`: spend by organization, user and model in the current
period (usage_limit_config.period, UTC), from the reporting views of
sql/55_spend_views.sql; any login in chatd_reporting may run it."""

from __future__ import annotations

import argparse
from datetime import UTC
from typing import Any

from chatd.cli.common import (
    add_database_argument,
    add_json_argument,
    format_micros,
    print_json,
    run_command,
    table,
)
from chatd.client import Client
from chatd.protocol import queries

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = """chatd spend
chatd spend --by user --json"""

# --by: (query, JSON keys, table headers)
_REPORTS: dict[str, tuple[str, list[str], list[str]]] = {
    "organization": (queries.SPEND_BY_ORGANIZATION,
                     ["organization_id", "organization", "spent_micros", "users", "priced_messages"],
                     ["ORGANIZATION ID", "ORGANIZATION", "SPENT", "USERS", "PRICED MESSAGES"]),
    "user": (queries.SPEND_BY_USER,
             ["user_id", "user", "spent_micros", "limit_micros", "limit_source", "priced_messages",
              "organizations"],
             ["USER ID", "USER", "SPENT", "LIMIT", "LIMIT SOURCE", "PRICED MESSAGES", "ORGS"]),
    "model": (queries.SPEND_BY_MODEL,
              ["model_config_id", "provider", "model", "spent_micros", "messages",
               "unpriced_messages", "input_tokens", "output_tokens"],
              ["MODEL ID", "PROVIDER", "MODEL", "SPENT", "MESSAGES", "UNPRICED", "INPUT TOKENS",
               "OUTPUT TOKENS"]),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Report spend (USD) in the current spend-limit period (usage_limit_config.period, "
        "UTC; `chatd limits set --period` changes it) by organization, user and model. "
        "Soft-deleted messages count; unpriced models cost nothing."
    )
    parser.add_argument("--by", choices=[*_REPORTS, "all"], default="all",
                        help="which report (default all three)")
    add_json_argument(parser)
    add_database_argument(parser)


def run(args: argparse.Namespace) -> int:
    return run_command(args, lambda client: _spend(client, args), prog="spend")


def _cell(key: str, value: Any) -> Any:
    if key.endswith("_micros"):
        return format_micros(value) if value is not None else "none"
    return value


async def _spend(client: Client, args: argparse.Namespace) -> int:
    period, start, resets = (await client.fetch(queries.SPEND_PERIOD))[0]
    start, resets = start.astimezone(UTC), resets.astimezone(UTC)
    chosen = list(_REPORTS) if args.by == "all" else [args.by]
    reports: dict[str, list[dict[str, Any]]] = {}
    for name in chosen:
        query, keys, _ = _REPORTS[name]
        rows = await client.fetch(query)
        reports[name] = [dict(zip(keys, row, strict=True)) for row in rows]
    if args.json:
        print_json({"period": period, "period_start": start.isoformat(),
                    "resets_at": resets.isoformat(), **reports})
        return 0
    print(f"spend this {period}: {start:%Y-%m-%d %H:%M} to {resets:%Y-%m-%d %H:%M} UTC")
    for name in chosen:
        _, keys, headers = _REPORTS[name]
        print(f"\nby {name}:")
        cells: list[list[Any]] = [[_cell(k, r[k]) for k in keys] for r in reports[name]]
        print(table(cells, headers) if cells else "  nothing spent")
    return 0
