"""`chatd watch ID`: follow one chat's events (status, messages, streamed
parts, queue, retries, errors) until interrupted."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from uuid import UUID

from chatd.cli.common import add_identity_arguments, resolve_identity, run_command
from chatd.client import (
    ChatDeletedEvent,
    ChildrenEvent,
    Client,
    ErrorEvent,
    Event,
    MessageEvent,
    MessagesDeletedEvent,
    PartsEvent,
    QueueEvent,
    RetryEvent,
    StatusEvent,
    TitleEvent,
    ToolCallsEvent,
)

__all__ = ["EXAMPLE", "add_arguments", "describe", "run"]

EXAMPLE = "chatd watch 0b7e2f9c-... --json --exit-when-idle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Follow one chat's events until interrupted (Ctrl-C)."
    parser.add_argument("chat", type=UUID, help="chat id")
    history = parser.add_mutually_exclusive_group()
    history.add_argument("--after", type=int, default=None, metavar="MESSAGE_ID",
                         help="show only messages after this id (default: the whole history)")
    history.add_argument("--newest", type=int, default=None, metavar="N",
                         help="start with the newest N messages (1 to 1000) of a long chat, then follow")
    parser.add_argument("--json", action="store_true", help="one JSON object per event")
    parser.add_argument("--exit-when-idle", action="store_true",
                        help="stop once the chat is waiting or in error")
    add_identity_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_command(args, lambda client: _watch(client, args), prog="watch")


def _text(content: list[dict[str, Any]]) -> str:
    return "".join(str(p.get("text", "")) for p in content if p.get("type") in ("text", "reasoning"))


def describe(event: Event) -> dict[str, Any]:
    """A JSON-friendly description of an event."""
    if isinstance(event, StatusEvent):
        return {"event": "status", "status": event.status, "archived": event.archived,
                "version": event.version, "lease": event.lease, "worker_id": event.worker_id}
    if isinstance(event, MessageEvent):
        m = event.message
        return {"event": "message", "id": m.id, "role": m.role, "content": m.content,
                "input_tokens": m.input_tokens, "output_tokens": m.output_tokens,
                "total_cost_micros": m.total_cost_micros}
    if isinstance(event, PartsEvent):
        return {"event": "parts", "lease": event.lease, "seq": event.seq, "parts": event.parts}
    if isinstance(event, QueueEvent):
        return {"event": "queue", "version": event.version,
                "queue": [{"id": q.id, "text": _text(q.content)} for q in event.queue]}
    if isinstance(event, RetryEvent):
        return {"event": "retry", "attempt": event.attempt, "delay_ms": event.delay_ms,
                "retrying_at": event.retrying_at.isoformat() if event.retrying_at else None,
                "error": event.error.__dict__ if event.error else None}
    if isinstance(event, ErrorEvent):
        return {"event": "error", "error": event.error.__dict__ if event.error else None}
    if isinstance(event, MessagesDeletedEvent):
        return {"event": "messages_deleted", "from_message_id": event.from_message_id}
    if isinstance(event, TitleEvent):
        return {"event": "title", "title": event.title}
    if isinstance(event, ToolCallsEvent):
        return {"event": "tool_calls", "version": event.version, "calls": event.calls}
    if isinstance(event, ChildrenEvent):
        return {"event": "children", "children": [
            {"id": str(c.id), "status": c.status, "title": c.title, "tool_call_id": c.parent_tool_call_id}
            for c in event.children
        ]}
    return {"event": "deleted"}


def _line(event: Event) -> str:
    d = describe(event)
    if isinstance(event, StatusEvent):
        return f"[status] {event.status}{' (archived)' if event.archived else ''} v{event.version}"
    if isinstance(event, MessageEvent):
        m = event.message
        return f"[message {m.id}] {m.role}: {_text(m.content)}"
    if isinstance(event, PartsEvent):
        return f"[parts {event.lease}/{event.seq}] {_text(event.parts)}"
    if isinstance(event, QueueEvent):
        return f"[queue] {len(event.queue)} queued"
    if isinstance(event, RetryEvent):
        reason = event.error.message if event.error else ""
        return f"[retry] attempt {event.attempt} in {d['delay_ms']} ms: {reason}"
    if isinstance(event, ErrorEvent):
        return f"[error] {event.error.message if event.error else ''} ({event.error.kind if event.error else ''})"
    if isinstance(event, MessagesDeletedEvent):
        return f"[deleted] messages from {event.from_message_id} on"
    if isinstance(event, TitleEvent):
        return f"[title] {event.title}"
    if isinstance(event, ToolCallsEvent):
        return f"[tool calls] {', '.join(str(c.get('tool_name')) for c in event.calls)}"
    if isinstance(event, ChildrenEvent):
        return "[sub-agents] " + ", ".join(f"{c.id} {c.status}" for c in event.children)
    return "[deleted] the chat was deleted"


async def _watch(client: Client, args: argparse.Namespace) -> int:
    who = await resolve_identity(client, args)
    if args.newest is not None and not 1 <= args.newest <= 1000:
        print("chatd watch: --newest takes 1 to 1000", file=sys.stderr)
        return 2
    async with client.subscribe(who.user_id, args.chat, after_message_id=args.after, newest=args.newest) as events:
        async for event in events:
            print(json.dumps(describe(event), default=str) if args.json else _line(event), flush=True)
            if isinstance(event, ChatDeletedEvent):
                return 0
            if (args.exit_when_idle and isinstance(event, StatusEvent)
                    and event.status in ("waiting", "error")):
                return 0
    print("chatd watch: the subscription ended", file=sys.stderr)
    return 1
