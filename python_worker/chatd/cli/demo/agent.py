"""The demo's agent chats (docs/tools.md, docs/agents.md): one whose model
calls a tool of the example MCP server (examples/mcp_server.py, run by the
worker over stdio), one whose model calls a client tool that this demo
answers with `Client.submit_tool_results`, and one whose model spawns two
sub-agents (`spawn_agent`) and answers with what they found."""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from chatd.client import ChildrenEvent, Client, MessageEvent, StatusEvent, ToolCallsEvent
from chatd.protocol import queries
from chatd.testing.fakellm import FakeLLM
from chatd.testing.fakellm.script import Text

__all__ = ["MCP_EXAMPLE", "AgentChat", "register_example_server", "run_agent_chats", "script_fake"]

#: the example MCP server of a checkout; absent from an installed wheel
MCP_EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "mcp_server.py"

ASK_USER = {
    "name": "ask_user",
    "description": "Ask the person at the terminal a question and return their answer.",
    "input_schema": {"type": "object", "properties": {"question": {"type": "string"}},
                     "required": ["question"]},
}
MCP_PROMPT = "What is 2 + 3? Use the add tool of the example server."
CLIENT_PROMPT = "Ask me for my favourite colour with the ask_user tool, then confirm it."
AGENTS_PROMPT = ("Use two sub-agents (spawn_agent): one names a prime number above 10, the other "
                 "a colour of the rainbow. Then tell me both.")


class AgentChat:
    """One agent chat of the demo and what its subscription saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.chat_id: UUID | None = None
        self.log: list[str] = []


def register_example_server(owner_dsn: str) -> bool:
    """Register examples/mcp_server.py as MCP server `example` (stdio);
    False when this installation has no example server."""
    if not MCP_EXAMPLE.is_file():
        return False
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(MCP_EXAMPLE))}"
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(queries.UPSERT_MCP_SERVER, ("example", None, command, None, True))
    return True


def script_fake(fake: FakeLLM) -> None:
    """What the scripted LLM answers: a tool call, then an answer using its result."""
    fake.script(
        Text("", tool_calls=({"id": "demo_add", "name": "mcp__example__add", "input": {"a": 2, "b": 3}},)),
        Text("The example MCP server's add tool says 2 + 3 = 5."),
        match=MCP_PROMPT,
    )
    fake.script(
        Text("", tool_calls=({"id": "demo_ask", "name": "ask_user",
                              "input": {"question": "What is your favourite colour?"}},)),
        Text("Blue it is: the client tool answered, and the turn went on."),
        match=CLIENT_PROMPT,
    )
    fake.script(
        Text("", tool_calls=(
            {"id": "demo_prime", "name": "spawn_agent", "input": {"prompt": "Name a prime number above 10."}},
            {"id": "demo_colour", "name": "spawn_agent", "input": {"prompt": "Name a colour of the rainbow."}},
        )),
        Text("My sub-agents found 13 and indigo."),
        match=AGENTS_PROMPT,
    )
    fake.script(Text("13"), match="Name a prime number above 10.")
    fake.script(Text("indigo"), match="Name a colour of the rainbow.")


def _describe(event: Any) -> str | None:
    if not isinstance(event, MessageEvent):
        return None
    message = event.message
    calls = [p for p in message.content if p.get("type") == "tool-call"]
    results = [p for p in message.content if p.get("type") == "tool-result"]
    if calls:
        return "model asked for " + ", ".join(f"{c.get('tool_name')}({c.get('input')})" for c in calls)
    if results:
        return "tool result " + ", ".join(repr(r.get("output"))[:60] for r in results)
    if message.role == "assistant":
        return f"answer: {message.text!r}"
    return None


async def _follow(client: Client, user: UUID, chat: AgentChat,
                  on_calls: Callable[[ToolCallsEvent], Any] | None = None) -> None:
    assert chat.chat_id is not None
    answered = False
    async with client.subscribe(user, chat.chat_id) as events:
        async for event in events:
            line = _describe(event)
            if line:
                chat.log.append(line)
            if isinstance(event, MessageEvent) and event.message.role == "assistant" \
                    and not any(p.get("type") == "tool-call" for p in event.message.content):
                answered = True
            if isinstance(event, ChildrenEvent):
                chat.log.append("sub-agents: " + ", ".join(f"{c.title!r} {c.status}" for c in event.children))
            if isinstance(event, ToolCallsEvent) and on_calls is not None:
                chat.log.append(f"status requires_action: {len(event.calls)} client call(s) pending")
                await on_calls(event)
            if isinstance(event, StatusEvent) and event.status == "error":
                chat.log.append("error")
                return
            if answered and isinstance(event, StatusEvent) and event.status == "waiting":
                return
            if answered and isinstance(event, MessageEvent):
                return


async def run_agent_chats(
    client: Client, user: UUID, org: UUID, *, with_mcp: bool, say: Callable[[str], None]
) -> list[AgentChat]:
    """Create the agent chats, answer the client tool, and return them with their logs."""
    chats: list[AgentChat] = []
    followers = []
    if with_mcp:
        mcp = AgentChat("mcp tool")
        mcp.chat_id = await client.create_chat(user, org, MCP_PROMPT, title="mcp tool", mcp_servers=["example"])
        chats.append(mcp)
        followers.append(_follow(client, user, mcp))
    asker = AgentChat("client tool")
    asker.chat_id = await client.create_chat(user, org, CLIENT_PROMPT, title="client tool", tools=[ASK_USER])
    chats.append(asker)

    async def answer(event: ToolCallsEvent) -> None:
        assert asker.chat_id is not None
        results = [{"tool_call_id": c["tool_call_id"], "output": "blue"} for c in event.calls]
        done = await client.submit_tool_results(user, asker.chat_id, results)
        asker.log.append(f"the demo answered 'blue' (submit_tool_results): chat {done.get('status')}")

    followers.append(_follow(client, user, asker, on_calls=answer))
    spawner = AgentChat("sub-agents")
    spawner.chat_id = await client.create_chat(user, org, AGENTS_PROMPT, title="sub-agents", agents=True)
    chats.append(spawner)
    followers.append(_follow(client, user, spawner))
    try:
        await asyncio.wait_for(asyncio.gather(*followers), timeout=45)
    except TimeoutError:
        for chat in chats:
            print(f"\n'{chat.name}' saw: {chat.log}", file=sys.stderr)
        raise SystemExit("chatd demo: the agent chats did not finish within 45 s") from None
    for chat in chats:
        say(f"chat '{chat.name}':")
        for line in chat.log:
            print(f"     {line}")
    return chats
