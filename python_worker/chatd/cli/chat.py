"""`chatd chat "prompt"`: start a chat (or continue one with --chat) and
stream the answer to the terminal as it arrives, then print tokens and cost.

The answer is followed with a subscription (LISTEN, snapshot, live events),
so nothing is missed however fast the worker is. A spinner runs on stderr
until the first token, only when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
from typing import TextIO
from uuid import UUID

from chatd.cli.common import add_identity_arguments, format_micros, resolve_identity, run_command
from chatd.client import (
    Client,
    ErrorEvent,
    Message,
    MessageEvent,
    PartsEvent,
    RetryEvent,
    StatusEvent,
)

__all__ = ["EXAMPLE", "add_arguments", "run"]

EXAMPLE = """chatd chat "Explain MVCC in one paragraph"
chatd chat --chat 0b7e2f9c-... "and then?"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Send a prompt and stream the answer. Without --chat a new chat is created; "
        "its id is printed on stderr so you can continue it."
    )
    parser.add_argument("prompt", help="the message to send")
    parser.add_argument("--chat", type=UUID, default=None, metavar="ID",
                        help="continue this chat instead of creating one")
    parser.add_argument("--model", type=UUID, default=None, metavar="ID",
                        help="model config id (default: the chat's, or the default model)")
    parser.add_argument("--title", default=None, help="title of a new chat (default: none)")
    parser.add_argument("--system", default=None, metavar="PROMPT",
                        help="system prompt of a new chat (default: none)")
    parser.add_argument("--interrupt", action="store_true",
                        help="with --chat: interrupt a running turn instead of queueing")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up waiting for the answer after this long (default: wait)")
    add_identity_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_command(args, lambda client: _chat(client, args), prog="chat")


class Spinner:
    """A progress line on stderr while waiting for the first token (TTY only)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.task: asyncio.Task[None] | None = None
        self.message = "waiting for the model"

    def start(self) -> None:
        if self.stream.isatty() and self.task is None:
            self.task = asyncio.create_task(self._spin())

    async def _spin(self) -> None:
        for frame in itertools.cycle("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"):
            self.stream.write(f"\r{frame} {self.message}…\033[K")
            self.stream.flush()
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
            self.stream.write("\r\033[K")
            self.stream.flush()


async def _chat(client: Client, args: argparse.Namespace) -> int:
    who = await resolve_identity(client, args)
    after = 0
    if args.chat is None:
        chat_id = await client.create_chat(
            who.user_id, who.organization_id, args.prompt, model_config_id=args.model,
            title=args.title, system_prompt=args.system,
        )
        print(f"chat {chat_id}", file=sys.stderr)
    else:
        chat_id = args.chat
        before = await client.snapshot(who.user_id, chat_id, 2**62)
        after = int(before.raw.get("last_message_id") or 0)
        sent = await client.send_message(
            who.user_id, chat_id, args.prompt,
            busy_behavior="interrupt" if args.interrupt else "queue", model_config_id=args.model,
        )
        if sent.get("queued"):
            print("(queued behind the running turn)", file=sys.stderr)
    follow = _follow(client, who.user_id, chat_id, after, args.prompt)
    if args.timeout is None:
        return await follow
    try:
        async with asyncio.timeout(args.timeout):
            return await follow
    except TimeoutError:
        print(f"\nchatd chat: no answer within {args.timeout:g}s; the chat goes on: {chat_id}",
              file=sys.stderr)
        return 1


async def _follow(client: Client, user_id: UUID, chat_id: UUID, after: int, prompt: str) -> int:
    """Print the answer to our message: the first assistant message after
    our user message (the newest user message after ``after``)."""
    # One event loop over the subscription with its printing state (spinner,
    # streamed text); splitting it would pass that state around.
    out, err = sys.stdout, sys.stderr
    spinner = Spinner(err)
    spinner.start()
    asked = False  # our user message has been seen
    printed = ""  # streamed text of the current turn
    lease: int | None = None
    try:
        async with client.subscribe(user_id, chat_id, after_message_id=after) as events:
            async for event in events:
                if isinstance(event, MessageEvent):
                    message = event.message
                    if message.role == "user":
                        asked = True
                        printed, lease = "", None
                    elif message.role == "assistant" and asked:
                        spinner.stop()
                        _finish_text(out, printed, message.text)
                        _print_usage(err, message)
                        return 0
                elif isinstance(event, PartsEvent):
                    if lease != event.lease:
                        if printed:
                            out.write("\n")  # a retried turn starts over
                        printed, lease = "", event.lease
                    text = event.text
                    if text:
                        spinner.stop()
                        out.write(text)
                        out.flush()
                        printed += text
                elif isinstance(event, RetryEvent):
                    reason = event.error.message if event.error else "the turn failed"
                    delay = f" in {event.delay_ms / 1000:g}s" if event.delay_ms is not None else ""
                    spinner.message = f"retrying (attempt {event.attempt}){delay}: {reason}"
                    if not err.isatty():
                        print(f"retrying (attempt {event.attempt}){delay}: {reason}", file=err)
                elif isinstance(event, ErrorEvent) or (
                    isinstance(event, StatusEvent) and event.status == "error" and asked
                ):
                    spinner.stop()
                    snapshot = await client.snapshot(user_id, chat_id, 2**62)
                    error = snapshot.chat.last_error
                    print(f"\nchatd chat: the turn failed: "
                          f"{error.message if error else 'unknown error'}"
                          f"{f' ({error.kind})' if error else ''}", file=err)
                    return 1
                elif isinstance(event, StatusEvent) and event.status == "waiting" and asked:
                    spinner.stop()
                    if printed:
                        out.write("\n")
                    print("chatd chat: the turn was interrupted", file=err)
                    return 1
        print("chatd chat: the subscription ended", file=err)
        return 1
    finally:
        spinner.stop()
        with contextlib.suppress(Exception):
            out.flush()


def _finish_text(out: TextIO, printed: str, final: str) -> None:
    """Complete what was streamed with the final message (parts are a
    preview: some may have been skipped, the message is authoritative)."""
    if final.startswith(printed):
        out.write(final[len(printed):])
    else:
        if printed:
            out.write("\n")
        out.write(final)
    out.write("\n")
    out.flush()


def _print_usage(err: TextIO, message: Message) -> None:
    tokens = [
        f"{label} {value}"
        for label, value in (
            ("in", message.input_tokens), ("out", message.output_tokens),
            ("reasoning", message.reasoning_tokens), ("cache read", message.cache_read_tokens),
            ("cache write", message.cache_write_tokens),
        )
        if value
    ]
    cost = (
        format_micros(message.total_cost_micros)
        if message.total_cost_micros is not None else "unpriced"
    )
    runtime = f" · {message.runtime_ms / 1000:.1f}s" if message.runtime_ms is not None else ""
    print(f"tokens: {', '.join(tokens) or 'none reported'} · cost {cost}{runtime}", file=err)
