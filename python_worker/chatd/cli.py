"""The `chatd` command: one subcommand per concern, each in its own module.

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``; they
are imported only when their subcommand runs, so `chatd migrate` does not
load the LLM SDKs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("chatd.migrate", "apply, revert, inspect or print schema migrations"),
    "db": ("chatd.dbcmd", "start or stop a throwaway local PostgreSQL cluster"),
    "worker": ("chatd.worker", "run a worker: claim chats, call the LLM, stream, write back"),
    "fakellm": ("chatd.fakellm", "run the scriptable fake LLM server (OpenAI and Anthropic APIs)"),
    "chat": ("chatd.cli_chat", "send a prompt (new chat or --chat ID) and stream the answer"),
    "chats": ("chatd.cli_chats", "list your chats with their status"),
    "watch": ("chatd.cli_watch", "follow one chat's events"),
    "models": ("chatd.cli_models", "add or list model configurations"),
    "providers": ("chatd.cli_providers", "add or list LLM providers"),
    "limits": ("chatd.cli_limits", "show or set spend limits"),
    "demo": ("chatd.demo", "run chatd end to end on a throwaway database and a scripted LLM"),
}


def build_parser() -> argparse.ArgumentParser:
    from chatd import __version__

    parser = argparse.ArgumentParser(
        prog="chatd", description="Durable LLM chat sessions on PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"chatd {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, description=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let its module define the rest.
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        sub = argparse.ArgumentParser(prog=f"chatd {argv[0]}", description=COMMANDS[argv[0]][1])
        module.add_arguments(sub)
        args = sub.parse_args(argv[1:])
        code: int = module.run(args)
        return code
    parser.parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
