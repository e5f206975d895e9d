"""The tool loop of one turn (docs/tools.md), for a chat that has tools:
collecting the tool calls a model step streams (`StepCalls`), committing the
step before any tool runs, running the MCP calls in parallel with a timeout
and committing each result as it comes (`ToolLoop`). SQL decides what comes
next after every commit (`chatd.commit_tool_step`, `commit_tool_results`):
the next model step, `requires_action` for client calls, or the end of the
turn at the step limit. After a crash the next claim resumes here from the
history: calls of the last step without a committed result run again (at
least once; the call id goes to the MCP server for deduplication)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from chatd.llm import ToolCallDelta, ToolCallStart, ToolSpec
from chatd.protocol import queries
from chatd.tools import McpServer, McpSessions, McpTool
from chatd.worker.history import load_history

if TYPE_CHECKING:
    from chatd.worker.turn import TurnRun

__all__ = ["StepCalls", "ToolLoop", "pending_calls"]

log = logging.getLogger("chatd.worker")

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_CALL_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


@dataclass
class StepCalls:
    """The tool calls one model step streams: name first, then input pieces."""

    calls: dict[str, dict[str, Any]] = field(default_factory=dict)

    def feed(self, event: ToolCallStart | ToolCallDelta) -> dict[str, Any]:
        """Records the event; returns the stream part subscribers see."""
        if isinstance(event, ToolCallStart):
            self.calls[event.call_id] = {"name": event.name, "input": []}
            return {"type": "tool-call", "tool_call_id": event.call_id, "tool_name": event.name}
        self.calls.setdefault(event.call_id, {"name": "", "input": []})["input"].append(event.fragment)
        return {"type": "tool-input", "tool_call_id": event.call_id, "delta": event.fragment}

    def parts(self, source_of: Any) -> list[dict[str, Any]]:
        """The tool-call parts to commit. An input that is not a JSON object
        becomes {} with `invalid_input` (the worker answers such a call with
        an error instead of running it); a name or id chatd would refuse is
        replaced by a valid one."""
        out = []
        for n, (call_id, call) in enumerate(self.calls.items()):
            text = "".join(call["input"]) or "{}"
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            name = call["name"] if _NAME.match(call["name"] or "") else "invalid_tool_name"
            part: dict[str, Any] = {
                "type": "tool-call",
                "tool_call_id": call_id if _CALL_ID.match(call_id) else f"call_{n}",
                "tool_name": name,
                "input": value if isinstance(value, dict) else {},
                "source": source_of(name),
            }
            if not isinstance(value, dict):
                part["invalid_input"] = text[:2000]
            out.append(part)
        return out


def pending_calls(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The tool calls of the history's last step that have no result yet
    (what SQL calls pending): after a crash, the work left to redo."""
    answered: set[str] = set()
    for message in reversed(messages):
        content = message.get("content") or []
        if message.get("role") == "tool":
            answered.update(str(p.get("tool_call_id")) for p in content if p.get("type") == "tool-result")
        elif message.get("role") == "assistant":
            return [dict(p) for p in content
                    if p.get("type") == "tool-call" and str(p.get("tool_call_id")) not in answered]
        elif message.get("role") == "user":
            return []
    return []


class ToolLoop:
    """The tools of one turn: the definitions offered to the model, and the
    commits and calls between two model steps."""

    def __init__(self, run: TurnRun, tools: Mapping[str, Any]) -> None:
        self.run = run
        self.client = {str(t["name"]): t for t in tools.get("client") or ()}
        # chatd's built-ins (spawn_agent, docs/agents.md): SQL runs them
        # when the step is committed; the worker only offers them
        self.builtin = {str(t["name"]): t for t in tools.get("builtin") or ()}
        limits = tools.get("limits") or {}
        self.timeout = float(limits.get("tool_timeout_ms") or 60000) / 1000
        self.sessions = McpSessions([McpServer.from_json(s) for s in tools.get("mcp_servers") or ()])
        self.mcp: dict[str, McpTool] = {}

    async def specs(self) -> list[ToolSpec]:
        """Client tools and the MCP servers' tools (listed once per turn)."""
        if not self.mcp:
            self.mcp = {t.exposed: t for t in await self.sessions.tools()}
        specs = [ToolSpec(n, str(t.get("description") or ""), t.get("input_schema") or {})
                 for n, t in {**self.builtin, **self.client}.items()]
        specs += [ToolSpec(n, t.description, t.input_schema) for n, t in self.mcp.items() if n not in self.client]
        return specs

    def source_of(self, name: str) -> str:
        """client for the chat's tools, builtin for chatd's (spawn_agent);
        mcp for anything else (an unknown name gets an is_error result the
        model sees)."""
        if name in self.client:
            return "client"
        return "builtin" if name in self.builtin else "mcp"

    async def _commit(self, query: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One commit of the loop. The worker ignores the notification of a
        commit that ends this lease (requires_action, step limit): the turn
        is over by SQL's decision, not lost."""
        turn = self.run.turn
        turn.finishing = True
        rows = await self.run.worker._fetch(query, {**self.run.base, **params})
        result: dict[str, Any] = rows[0][0]
        if result.get("status") == "running":
            turn.finishing = False
        if result.get("message_id") is not None:
            self.run.worker.metrics.inc("chatd_worker_tool_commits_total")
        return result

    async def step(self, content: list[dict[str, Any]], final: Mapping[str, Any]) -> bool:
        """Commits a model step that ended with tool calls, then runs the
        worker's calls. True when the next model step follows in this turn."""
        stored = [{k: v for k, v in p.items() if k != "invalid_input"} for p in content]
        result = await self._commit(queries.COMMIT_TOOL_STEP, {
            "content": Jsonb(stored), "usage": final["usage"],
            "provider_response_id": final["provider_response_id"], "runtime_ms": final["runtime_ms"],
        })
        claim = self.run.claim
        step_id = int(result["message_id"])
        claim.messages = [*claim.messages, {"id": step_id, "role": "assistant", "content": stored}]
        if result["status"] != "running":
            return False
        calls = [p for p in content if p.get("type") == "tool-call"]
        return await self._run_and_sync(calls, step_id)

    async def resume(self) -> bool:
        """After a crash or a release: the calls of the last committed step
        without a result run (again). True when the turn goes on."""
        pending = pending_calls(self.run.claim.messages)
        if not pending:
            return True
        step_id = max(int(m["id"]) for m in self.run.claim.messages if m.get("role") == "assistant")
        return await self._run_and_sync(pending, step_id)

    async def _run_and_sync(self, calls: Sequence[Mapping[str, Any]], step_id: int) -> bool:
        """Runs the worker's (mcp) calls of a step. SQL wrote the results of
        its spawn_agent calls itself (a refused spawn at once, a child's
        answer when it is done, possibly while the mcp calls ran): when the
        step had any and the turn goes on, the history after the step is
        read again, so the next model step sees every result."""
        going_on = await self.run_calls([c for c in calls if c.get("source") == "mcp"])
        if going_on and any(c.get("source") == "builtin" for c in calls):
            claim = self.run.claim
            claim.messages = [m for m in claim.messages if m.get("id") is not None and int(m["id"]) <= step_id]
            await load_history(self.run.worker, claim)
        return going_on

    async def run_calls(self, calls: Sequence[Mapping[str, Any]]) -> bool:
        """Runs the calls in parallel; each result is committed as soon as it
        is there (a crash redoes only the calls without one)."""
        if not calls:
            result = await self._commit(queries.COMMIT_TOOL_RESULTS, {"results": Jsonb([])})
            return bool(result["status"] == "running")
        status = "running"
        for next_done in asyncio.as_completed([self._call(c) for c in calls]):
            answer = await next_done
            result = await self._commit(queries.COMMIT_TOOL_RESULTS, {"results": Jsonb([answer])})
            claim = self.run.claim
            claim.messages = [*claim.messages, {
                "id": result["message_id"], "role": "tool",
                "content": [{"type": "tool-result", **answer}],
            }]
            status = str(result["status"])
        return status == "running"

    async def _call(self, call: Mapping[str, Any]) -> dict[str, Any]:
        call_id, name = str(call["tool_call_id"]), str(call["tool_name"])
        tool = self.mcp.get(name)
        if "invalid_input" in call:
            output, is_error = f"invalid input: not a JSON object: {call['invalid_input'][:500]}", True
        elif tool is None:
            output, is_error = f"unknown tool {name}", True
        else:
            output, is_error = await self.sessions.call(
                tool.server, tool.name, call.get("input") or {}, call_id, self.timeout
            )
        return {"tool_call_id": call_id, "output": output, "is_error": is_error}

    async def aclose(self) -> None:
        await self.sessions.aclose()
