"""MCP servers as the worker sees them: one `McpSessions` per turn opens a
session to each server the chat may use (stdio: the registered command,
run with only the SDK's default environment plus the server's secret
variable; streamable HTTP: the URL, the secret as a bearer token), lists
its tools (cached per server for `LIST_TTL` seconds, dropped on
`tools/list_changed`) and calls them with a timeout. Every failure is a
result with `is_error` the model sees, never an exception: a server that
is down, slow, answers garbage or lists a broken schema must not fail the
turn."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

__all__ = ["LIST_TTL", "McpServer", "McpSessions", "McpTool", "exposed_name"]

log = logging.getLogger("chatd.tools")

#: Seconds a server's tool list is reused before it is listed again.
LIST_TTL = 60.0
#: Seconds to connect to a server and list its tools.
CONNECT_TIMEOUT = 15.0

_CACHE: dict[tuple[str, str | None, str | None], tuple[float, list[McpTool]]] = {}


def exposed_name(server: str, tool: str) -> str:
    """The name the model sees for an MCP tool: mcp__<server>__<tool>."""
    return f"mcp__{server}__{tool}"


@dataclass(frozen=True)
class McpServer:
    """A row of chatd.mcp_servers as `acquire_chats` hands it out."""

    name: str
    url: str | None
    command: str | None
    secret_env: str | None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> McpServer:
        return cls(str(obj["name"]), obj.get("url"), obj.get("command"), obj.get("secret_env"))

    def key(self) -> tuple[str, str | None, str | None]:
        return (self.name, self.url, self.command)


@dataclass(frozen=True)
class McpTool:
    server: str
    name: str  # the server's own name for it
    description: str
    input_schema: Mapping[str, Any]

    @property
    def exposed(self) -> str:
        return exposed_name(self.server, self.name)


def _usable(tool: Any, server: str) -> McpTool | None:
    """A listed tool the model can be offered, or None (logged): its exposed
    name must be a valid tool name and its schema a JSON object."""
    name = getattr(tool, "name", None)
    schema = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None)
    if not isinstance(name, str) or not name.replace("_", "a").replace("-", "a").isalnum():
        log.warning("MCP server %s lists a tool with an unusable name %r: skipped", server, name)
        return None
    if len(exposed_name(server, name)) > 64 or not isinstance(schema, Mapping):
        log.warning("MCP server %s: tool %s has a name too long or a schema that is not an object: skipped",
                    server, name)
        return None
    return McpTool(server, name, str(getattr(tool, "description", None) or ""), dict(schema))


def result_output(result: Any) -> tuple[Any, bool]:
    """A CallToolResult as (output, is_error): the text blocks joined (other
    blocks as JSON), or the structured content when there is no text."""
    texts: list[str] = []
    for block in getattr(result, "content", None) or ():
        text = getattr(block, "text", None)
        if isinstance(text, str):
            texts.append(text)
        else:
            dump = getattr(block, "model_dump", None)
            texts.append(json.dumps(dump(mode="json") if dump else str(block)))
    is_error = bool(getattr(result, "is_error", False) or getattr(result, "isError", False))
    structured = getattr(result, "structured_content", None)
    if not texts and structured is not None:
        return structured, is_error
    return "\n".join(texts), is_error


async def _reachable(url: str) -> None:
    """Raises OSError unless the server's TCP port accepts a connection: the
    SDK's transport does not give up on a refused connection on its own."""
    parsed = urlsplit(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    async with asyncio.timeout(CONNECT_TIMEOUT):
        _, writer = await asyncio.open_connection(parsed.hostname, port)
    writer.close()


class McpSessions:
    """The MCP sessions of one turn, opened on first use and closed by
    `aclose` (in the task that opened them: the SDK's transports are anyio
    task groups)."""

    def __init__(self, servers: Sequence[McpServer]) -> None:
        self.servers = {s.name: s for s in servers}
        self.stack = AsyncExitStack()
        self.sessions: dict[str, ClientSession] = {}
        self.failed: dict[str, str] = {}

    async def _open(self, server: McpServer) -> ClientSession:
        secret = os.environ.get(server.secret_env) if server.secret_env else None
        if server.url:
            await _reachable(server.url)
            headers = {"Authorization": f"Bearer {secret}"} if secret else None
            http = await self.stack.enter_async_context(create_mcp_http_client(headers=headers))
            read, write = await self._http(server.url, http)
        else:
            argv = shlex.split(server.command or "")
            env = {server.secret_env: secret} if server.secret_env and secret is not None else None
            params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
            read, write = await self.stack.enter_async_context(stdio_client(params))
        session = await self.stack.enter_async_context(
            ClientSession(read, write, message_handler=self._handler(server))
        )
        await session.initialize()
        return session

    async def _http(self, url: str, http: Any) -> tuple[Any, Any]:
        streams = await self.stack.enter_async_context(streamable_http_client(url, http_client=http))
        return streams[0], streams[1]

    def _handler(self, server: McpServer) -> Any:
        async def handle(message: Any) -> None:
            method = getattr(message, "method", None) or getattr(getattr(message, "root", None), "method", None)
            if method == "notifications/tools/list_changed":
                _CACHE.pop(server.key(), None)
        return handle

    async def session(self, name: str) -> ClientSession | None:
        """The open session to a server, or None when it cannot be reached
        (the reason is in `failed`)."""
        if name in self.sessions:
            return self.sessions[name]
        if name in self.failed or name not in self.servers:
            return None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                self.sessions[name] = await self._open(self.servers[name])
        except Exception as exc:  # any failure is the server's: reported, not raised
            self.failed[name] = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("MCP server %s unreachable: %s", name, self.failed[name])
            return None
        return self.sessions[name]

    async def tools(self) -> list[McpTool]:
        """Every usable tool of every server (a server that is down offers none)."""
        out: list[McpTool] = []
        for server in self.servers.values():
            cached = _CACHE.get(server.key())
            if cached and time.monotonic() - cached[0] < LIST_TTL:
                out.extend(cached[1])
                continue
            session = await self.session(server.name)
            if session is None:
                continue
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    listed = await session.list_tools()
            except Exception as exc:
                log.warning("MCP server %s: tools/list failed: %s", server.name, exc)
                continue
            tools = [t for t in (_usable(x, server.name) for x in listed.tools) if t is not None]
            _CACHE[server.key()] = (time.monotonic(), tools)
            out.extend(tools)
        return out

    async def call(
        self, server: str, tool: str, arguments: Mapping[str, Any], call_id: str, seconds: float
    ) -> tuple[Any, bool]:
        """Runs one call: (output, is_error). The call id goes along in the
        request's _meta (chatd/tool_call_id) so a server can deduplicate a
        call chatd runs again after a crash (at least once)."""
        session = await self.session(server)
        if session is None:
            return f"MCP server {server} unavailable: {self.failed.get(server, 'not registered')}", True
        try:
            async with asyncio.timeout(seconds):
                result = await session.call_tool(
                    tool, dict(arguments), read_timeout_seconds=seconds,
                    meta=cast(Any, {"chatd/tool_call_id": call_id}),
                )
        except TimeoutError:
            return f"tool {tool} timed out after {seconds:g} s", True
        except Exception as exc:  # the model sees what went wrong
            return f"tool {tool} failed: {type(exc).__name__}: {exc}"[:2000], True
        return result_output(result)

    async def aclose(self) -> None:
        try:
            await self.stack.aclose()
        except Exception as exc:  # closing a broken transport
            log.debug("closing MCP sessions: %s", exc)
