"""The `chatd` command: one subcommand per module, `chatd X` is chatd/cli/X.py.

Each module exposes ``add_arguments(parser)`` and ``run(args) -> int``; they
are imported only when their subcommand runs, so `chatd migrate` does not
load the LLM SDKs. `chatd.cli.common` holds what the client-side commands
share (database URL, acting identity, amounts, tables).

The CLI is the outermost layer: it may import any chatd package (only
`fakellm` and `demo` import chatd.testing, whose fake server they run);
nothing else imports chatd.cli. No module outside chatd.cli defines
command-line arguments.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

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
    "demo": "run chatd end to end on a throwaway database and a scripted LLM",
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let its module define the rest.
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(module_name(argv[0]))
        sub = argparse.ArgumentParser(prog=f"chatd {argv[0]}", description=COMMANDS[argv[0]])
        module.add_arguments(sub)
        args = sub.parse_args(argv[1:])
        code: int = module.run(args)
        return code
    parser.parse_args(argv)
    return 2


if __name__ == "__main__":
    sys.exit(main())
