"""`chatd worker`: run a worker until SIGTERM (the engine is chatd.worker)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from chatd.cli.common import Exit
from chatd.config import OPTIONS, WorkerConfig, config_from_args
from chatd.logs import setup_logging
from chatd.worker import Worker, WorkerFatal

__all__ = ["EXAMPLE", "add_arguments", "add_worker_arguments", "run"]

EXAMPLE = """DATABASE_URL=postgresql://chatd_worker@db/app chatd worker --max-chats 20 --metrics-port 9100"""

log = logging.getLogger("chatd.worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a chatd worker: claim runnable chats, call their LLM, stream the output and "
        "write the result back through chatd's SQL functions. SIGTERM drains gracefully."
    )
    add_worker_arguments(parser)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of chatd.config.OPTIONS."""
    group = parser.add_argument_group("settings (flag, else environment variable, else default)")
    for option in OPTIONS:
        flag = "--" + option.name.replace("_", "-")
        # a setting without a static default says in its own help what applies
        default = "" if option.default is None else f"; default {option.default}"
        help_text = f"{option.help} [env {option.env}{default}]"
        if option.is_flag:
            group.add_argument(flag, dest=option.name, action="store_const", const=True,
                               default=None, help=help_text)
        else:
            group.add_argument(flag, dest=option.name, type=option.parse, default=None,
                               choices=option.choices, metavar=option.name.upper(),
                               help=help_text)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"chatd worker: {exc}", file=sys.stderr)
        return Exit.USAGE
    setup_logging(config.log_level, config.log_format)
    return asyncio.run(_main(config))


async def _main(config: WorkerConfig) -> int:
    worker = Worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    except WorkerFatal as exc:
        log.error("%s", exc)
        print(f"chatd worker: {exc}", file=sys.stderr)
        return Exit.UNREACHABLE if exc.unreachable else Exit.FAILED
    return 0
