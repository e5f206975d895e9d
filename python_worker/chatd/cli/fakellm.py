"""`chatd fakellm`: serve the scriptable fake LLM (chatd.testing.fakellm)
until SIGINT/SIGTERM; the root URL is the first line on stdout."""

from __future__ import annotations

import argparse

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = "chatd fakellm --host 0.0.0.0 --port 8080"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `chatd fakellm`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; the root URL is the first line on stdout."""
    from chatd.testing.fakellm import run_forever  # test support, loaded only for this command

    return run_forever(args.host, args.port)
