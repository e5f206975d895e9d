"""A tiny MCP server for chatd's tests and demo (docs/tools.md).

    python examples/mcp_server.py                      # stdio
    python examples/mcp_server.py --http --port 8765   # streamable HTTP at /mcp

Tools: `add(a, b)`, `echo(text)`, `sleep(seconds)` (for timeouts) and
`broken()` (always fails). With MCP_EXAMPLE_LOG set, every call appends one
JSON line {tool, arguments, tool_call_id} to that file, so a test can count
how often a call really ran; tool_call_id is the id chatd sends in the
request's _meta (chatd/tool_call_id), for deduplication.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("chatd-example")


def _log(ctx: Context | None, tool: str, arguments: dict[str, Any]) -> None:
    path = os.environ.get("MCP_EXAMPLE_LOG")
    if not path:
        return
    call_id = None
    try:
        meta = ctx.request_context.meta if ctx is not None else None  # type: ignore[union-attr]
        call_id = (meta or {}).get("chatd/tool_call_id") if isinstance(meta, dict) else getattr(
            meta, "model_extra", {}
        ).get("chatd/tool_call_id")
    except Exception:  # noqa: BLE001 - the log is best effort
        call_id = None
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"tool": tool, "arguments": arguments, "tool_call_id": call_id}) + "\n")


@server.tool()
def add(a: float, b: float, ctx: Context) -> float:
    """Adds two numbers."""
    _log(ctx, "add", {"a": a, "b": b})
    return a + b


@server.tool()
def echo(text: str, ctx: Context) -> str:
    """Returns the text it was given."""
    _log(ctx, "echo", {"text": text})
    return text


@server.tool()
async def sleep(seconds: float, ctx: Context) -> str:
    """Sleeps, then says so (a slow tool, for timeouts)."""
    _log(ctx, "sleep", {"seconds": seconds})
    await asyncio.sleep(seconds)
    return f"slept {seconds} s"


@server.tool()
def broken(ctx: Context) -> str:
    """Always fails."""
    _log(ctx, "broken", {})
    raise RuntimeError("broken on purpose")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    if args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run()


if __name__ == "__main__":
    main()
