"""The command-line contract of docs/cli.md: one exit-code table, --json on
every command that lists or shows, no tracebacks for user errors, help for
every option and an example per command, one rule for the database URL."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from repo_support import REPO_ROOT

from chatd import cli
from chatd.cli.common import Exit
from chatd.testing import Factory

DEAD_URL = "postgresql://chatd:s3cret@127.0.0.1:1/chatd"

# Every command that talks to the database, with arguments that would
# otherwise succeed; each must report a dead database as exit 3.
DATABASE_COMMANDS: list[list[str]] = [
    ["chats"], ["models", "list"], ["providers", "list"], ["limits", "show"],
    ["limits", "set", "--enable"], ["spend"], ["check"], ["migrate", "--status"],
    ["migrate", "--check"], ["migrate"], ["chat", "hi"],
    ["watch", "00000000-0000-0000-0000-000000000000"],
]


def chatd(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatd", *argv], capture_output=True, text=True, timeout=60,
        env={**os.environ, "CHATD_DATABASE_URL": "", **(env or {})},
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_exit_code_table_of_docs_cli_md_is_the_exit_enum() -> None:
    text = (REPO_ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    documented = {int(code): name for code, name in re.findall(r"^\| (\d+) \| `(\w+)` \|", text, re.M)}
    assert documented == {int(e): e.name for e in Exit}


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_option_of_every_command_has_help_and_the_help_an_example(command: str) -> None:
    parser, _ = cli.command_parser(command)
    assert parser.epilog and re.search(r"^example:\n  .*chatd ", parser.epilog)
    missing = [
        f"{p.prog} {'/'.join(a.option_strings) or a.dest}"
        for p in _parsers(parser) for a in p._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help
    ]
    assert missing == []


def test_worker_help_says_off_only_for_settings_that_are_off() -> None:
    parser, _ = cli.command_parser("worker")
    helps = {a.dest: a.help or "" for a in parser._actions}
    assert "default off" not in helps["database_url"] and "required" in helps["database_url"]
    assert "default off" not in helps["worker_id"] and "hostname:pid" in helps["worker_id"]
    assert "default: off" in helps["metrics_port"]
    log_format = next(a for a in parser._actions if a.dest == "log_format")
    assert log_format.choices == ("text", "json")


@pytest.mark.parametrize("argv", [["chats", "--nope"], ["migrate", "sideways"], ["limits"],
                                  ["spend", "--by", "planet"], ["check", "--nope"], ["nope"]])
def test_a_usage_error_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == Exit.USAGE


def test_a_bad_amount_is_one_line_and_exit_2_not_a_traceback(db: str) -> None:
    result = chatd("limits", "set", "--for-user", "local", "--user-limit", "abc", "--database-url", db)
    assert result.returncode == Exit.USAGE
    assert "Traceback" not in result.stderr
    assert "not an amount in USD: 'abc'" in result.stderr


def test_a_missing_database_url_is_one_line_and_exit_2() -> None:
    result = chatd("chats", env={"DATABASE_URL": ""})
    assert (result.returncode, result.stdout) == (Exit.USAGE, "")
    assert result.stderr.strip().splitlines() == [
        "chatd chats: no database: set DATABASE_URL (or CHATD_DATABASE_URL) or pass --database-url"
    ]


@pytest.mark.parametrize("argv", DATABASE_COMMANDS, ids=" ".join)
def test_a_dead_database_is_one_line_and_exit_3(argv: list[str]) -> None:
    started = time.monotonic()
    result = chatd(*argv, env={"DATABASE_URL": DEAD_URL})
    assert result.returncode == Exit.UNREACHABLE, result.stderr
    lines = result.stderr.strip().splitlines()
    if argv[0] == "check":  # check reports through its own one line
        assert lines[0].startswith("chatd check: database unreachable")
    assert len(lines) == 1, result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 8


def test_a_refused_operation_exits_1(db: str) -> None:
    result = chatd("models", "add", "no-such-provider", "m", "--database-url", db)
    assert result.returncode == Exit.FAILED and "provider" in result.stderr


def test_migrate_reads_chatd_database_url(db: str) -> None:
    result = chatd("migrate", "--status", env={"DATABASE_URL": "", "CHATD_DATABASE_URL": db})
    assert result.returncode == Exit.OK, result.stderr
    assert "0 not applied" in result.stdout


def test_json_of_chats_models_providers_and_limits(db: str, conn: psycopg.Connection[Any]) -> None:
    assert chatd("providers", "add", "acme", "--kind", "openai", "--api-key-env", "ACME_KEY",
                 "--database-url", db).returncode == 0
    assert chatd("models", "add", "acme", "small", "--default", "--input-price", "0.5",
                 "--database-url", db).returncode == 0
    providers = as_json(chatd("providers", "list", "--json", "--database-url", db))
    assert [{k: p[k] for k in ("name", "kind", "api_key_env", "enabled")} for p in providers] == [
        {"name": "acme", "kind": "openai", "api_key_env": "ACME_KEY", "enabled": True}
    ]
    assert set(providers[0]) == {"name", "kind", "base_url", "api_key_env", "enabled", "auth_header", "api", "id"}
    models = as_json(chatd("models", "list", "--json", "--database-url", db))
    assert [(m["provider"], m["model"], m["default"], Decimal(m["input_price_per_mtok"]),
             m["output_price_per_mtok"]) for m in models] == [("acme", "small", True, Decimal("0.5"), None)]
    assert as_json(chatd("chats", "--json", "--database-url", db)) == []
    limits = as_json(chatd("limits", "show", "--json", "--database-url", db))
    assert set(limits) == {"enabled", "default_limit_micros", "period", "user_id", "organization_id",
                           "limit_micros", "limit_source", "spent_micros", "period_start", "resets_at"}
    assert (limits["enabled"], limits["spent_micros"]) == (False, 0)


def test_json_of_chats_lists_each_chat(db: str, conn: psycopg.Connection[Any]) -> None:
    assert chatd("providers", "add", "p", "--kind", "openai-compat", "--base-url",
                 "http://127.0.0.1:9/v1", "--database-url", db).returncode == 0
    assert chatd("models", "add", "p", "m", "--default", "--database-url", db).returncode == 0
    chatd("chat", "hi", "--timeout", "0.1", "--database-url", db)  # creates it; nobody answers
    chats = as_json(chatd("chats", "--json", "--database-url", db))
    assert [(c["status"], c["archived"]) for c in chats] == [("pending", False)]
    assert set(chats[0]) == {"id", "status", "archived", "title", "updated_at", "last_error"}


def test_json_of_migrate_status(db: str) -> None:
    rows = as_json(chatd("migrate", "--status", "--json", "--database-url", db))
    assert {r["state"] for r in rows} == {"applied"}
    assert {r["kind"] for r in rows} == {"migration", "repeatable"}
    assert set(rows[0]) == {"kind", "name", "state", "applied_at"}


def test_spend_reports_organization_user_and_model_as_json_and_table(
    db: str, factory: Factory
) -> None:
    provider = factory.provider(name="acme")
    model = factory.model_config(provider=provider, model="big-model")
    org = factory.org(name="acme-org")
    user = factory.user(org=org, name="alice")
    chat = factory.chat(user, org=org, model=model)
    factory.message(chat, role="assistant", cost_micros=1_500_000)
    report = as_json(chatd("spend", "--json", "--database-url", db))
    assert set(report) == {"period", "period_start", "resets_at", "organization", "user", "model"}
    [by_org] = [o for o in report["organization"] if o["organization"] == "acme-org"]
    assert (by_org["spent_micros"], by_org["users"]) == (1_500_000, 1)
    assert [(u["user"], u["spent_micros"]) for u in report["user"]] == [("alice", 1_500_000)]
    assert [(m["provider"], m["model"], m["spent_micros"]) for m in report["model"]] == [
        ("acme", "big-model", 1_500_000)
    ]
    only_users = as_json(chatd("spend", "--by", "user", "--json", "--database-url", db))
    assert set(only_users) == {"period", "period_start", "resets_at", "user"}
    table = chatd("spend", "--database-url", db)
    assert table.returncode == 0
    assert "by organization:" in table.stdout and "$1.5" in table.stdout and "alice" in table.stdout
