"""The `chatd` command: one subcommand per module, `chatd X` is chatd/cli/X.py.

Each module exposes ``add_arguments(parser)``, ``run(args) -> int`` and
``EXAMPLE`` (shown at the end of its --help); they are imported only when
their subcommand runs, so `chatd migrate` does not load the LLM SDKs.
`chatd.cli.common` holds what the commands share (the exit-code table
`Exit`, `CommandError`, database URL, acting identity, amounts, tables,
--json). A command ends with an `Exit` status: return it, or raise
`CommandError(message, Exit.X)` and `main` prints one line and returns it.

The CLI is the outermost layer: it may import any chatd package (only
`fakellm` and `demo` import chatd.testing, whose fake server they run);
nothing else imports chatd.cli. No module outside chatd.cli defines
command-line arguments.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

# subcommand -> one-line help; `chatd NAME` runs the module chatd.cli.NAME
COMMANDS: dict[str, str] = {
    "migrate": "apply, revert, inspect or print schema migrations",
    "db": "start or stop a throwaway local PostgreSQL cluster",
    "worker": "run a worker: claim chats, call the LLM, stream, write back",
    "fakellm": "run the scriptable fake LLM server (OpenAI and Anthropic APIs)",
    "chat": "send a prompt (new chat or --chat ID) and stream the answer",
    "chats": "list your chats with their status",
    "watch": "follow one chat's events",
    "models": "add or list model configurations",
    "providers": "add or list LLM providers",
    "mcp": "register, list or remove MCP tool servers",
    "limits": "show or set spend limits",
    "spend": "report spend by organization, user and model for a period",
    "check": "health check for deploys and probes: database, schema, workers, stuck chats",
    "demo": "run chatd end to end on a throwaway database and a scripted LLM",
    "serve": "serve the chats API over HTTP, with SSE streams and a web page",
    "token": "issue a signed development token for chatd serve",
}


def module_name(command: str) -> str:
    """The module that implements ``chatd <command>``."""
    return f"{__name__}.{command}"


def build_parser() -> argparse.ArgumentParser:
    from chatd import __version__

    parser = argparse.ArgumentParser(
        prog="chatd", description="Durable LLM chat sessions on PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"chatd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text)
    return parser


def command_parser(command: str) -> tuple[argparse.ArgumentParser, Any]:
    """The parser of ``chatd <command>`` and its module."""
    from chatd.cli.common import Exit

    module = importlib.import_module(module_name(command))
    codes = ", ".join(f"{int(e)} {e.name.lower().replace('_', ' ')}" for e in Exit)
    sub = argparse.ArgumentParser(
        prog=f"chatd {command}", description=COMMANDS[command],
        epilog="example:\n  " + module.EXAMPLE.strip().replace("\n", "\n  ")
        + f"\n\nexit status: {codes} (docs/cli.md)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(sub)
    return sub, module


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status (`chatd.cli.common.Exit`)."""
    from chatd.cli.common import CommandError, Exit

    argv = list(sys.argv[1:] if argv is None else argv)
    # psycopg_pool warns once per failed connection attempt; a command says it once
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    # Parse the command name first, then let its module define the rest.
    name = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        if name is None:
            build_parser().parse_args(argv)
            return Exit.USAGE
        sub, module = command_parser(name)
        args = sub.parse_args(argv[1:])
        return int(module.run(args))
    except SystemExit as exc:  # argparse: --help, --version (0) or a usage error (2)
        if isinstance(exc.code, str):  # raise SystemExit("message") of an older command
            print(exc.code, file=sys.stderr)
            return Exit.FAILED
        return Exit.OK if exc.code is None else int(exc.code)
    except CommandError as exc:
        print(f"chatd {name}: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
