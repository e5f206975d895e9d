"""Compaction of a claimed turn's history (docs/context.md). SQL decides
when it is due and what to summarize (`chatd.turn_compaction`: the part
before the newest messages that stay, in chunks that fit the window); the
worker asks the chat's own model for the summary and commits it through
`chatd.commit_summary`, billed like any step. Then the turn's prompt is the
system prompt, the new summary and the messages after it. A failed summary
call fails the turn like a failed step (retried by SQL's policy); nothing
is lost, the messages stay."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from chatd.llm import ChatError, ChatErrorKind, ChatTurnError, Finished, PromptMessage, TextDelta
from chatd.llm.content import parts, tool_text
from chatd.protocol import queries
from chatd.worker.output import usage_json

if TYPE_CHECKING:
    from chatd.worker.turn import TurnRun

__all__ = ["MAX_ROUNDS", "SUMMARY_INSTRUCTIONS", "compact", "transcript"]

log = logging.getLogger("chatd.worker")

#: Summaries one turn writes at most before its model step (a history far
#: over the window is summarized chunk by chunk; the next claim goes on).
MAX_ROUNDS = 8

SUMMARY_INSTRUCTIONS = (
    "You compress the earlier part of a conversation so that it can continue without it. Write a "
    "summary in the conversation's language: the user's goals and instructions, facts, names, numbers, "
    "decisions, what tools returned that still matters, and open questions. Be faithful and concise; "
    "do not add anything that is not in the conversation. Answer with the summary only."
)


def transcript(summary: Sequence[Mapping[str, Any]] | None, messages: Sequence[Mapping[str, Any]]) -> str:
    """The part to summarize as one text: the current summary first, then
    each message as `role: text`, tool calls and results as text (one user
    message, so no provider sees a tool result without its call)."""
    lines: list[str] = []
    if summary:
        lines.append("Summary so far:\n" + _text(summary))
    for message in messages:
        lines.append(f"{message.get('role')}: {_text(message.get('content') or [])}")
    return "\n\n".join(lines)


def _text(content: Sequence[Mapping[str, Any]] | str) -> str:
    """Text parts as they are, tool calls and results as the plain text the
    provider adapters use for them (chatd.llm.content.tool_text)."""
    out = []
    for part in parts(content):
        rendered = str(part.get("text", "")) if part.get("type") == "text" else tool_text(part)
        if rendered:
            out.append(rendered)
    return " ".join(out)


async def compact(run: TurnRun, *, force: bool) -> bool:
    """Summarizes while SQL says a compaction is due; with ``force`` (after
    a context_length error) until what stays fits a share of the prompt that
    failed (chatd.turn_compaction). True when a summary was committed."""
    worker, claim = run.worker, run.claim
    done = False
    limit: int | None = None  # after a context_length error: the size of the prompt that failed
    for _ in range(MAX_ROUNDS):
        rows = await worker._fetch(queries.TURN_COMPACTION, {
            "worker_id": worker.config.worker_id, "chat_id": claim.chat_id, "lease": claim.lease,
            "force": force, "limit_tokens": limit,
        })
        chunk: Mapping[str, Any] | None = rows[0][0] if rows else None
        if not chunk:
            break
        if force:
            limit = int(chunk["limit_tokens"])
        started = time.monotonic()
        text, finished = await _summarize(run, chunk)
        content = [{"type": "text", "text": text}]
        rows = await worker._fetch(queries.COMMIT_SUMMARY, {
            "chat_id": claim.chat_id, "lease": claim.lease, "through_id": int(chunk["through_id"]),
            "content": Jsonb(content), "usage": Jsonb(usage_json(finished)),
            "provider_response_id": finished.response_id,
            "runtime_ms": int((time.monotonic() - started) * 1000),
        })
        _replace_history(run, int(rows[0][0]), int(chunk["through_id"]), content)
        worker.metrics.inc("chatd_worker_compactions_total")
        log.info("chat %s: summarized %d messages (through %s)", claim.chat_id,
                 len(chunk.get("messages") or []), chunk["through_id"])
        done = True
    return done


async def _summarize(run: TurnRun, chunk: Mapping[str, Any]) -> tuple[str, Finished]:
    worker, claim = run.worker, run.claim
    spec = claim.spec()
    prompt = [
        PromptMessage("system", [{"type": "text", "text": SUMMARY_INSTRUCTIONS}]),
        PromptMessage("user", [{"type": "text", "text": transcript(chunk.get("summary"), chunk.get("messages") or [])}]),
    ]
    pieces: list[str] = []
    finished: Finished | None = None
    async for event in worker.stream(
        spec, prompt, startup_timeout=worker.startup_timeout, idle_timeout=worker.config.idle_timeout,
        clients=worker.clients,
    ):
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        elif isinstance(event, Finished):
            finished = event
    text = "".join(pieces).strip()
    if finished is None or not text:
        raise ChatTurnError(ChatError(
            "the summary of the earlier conversation came back empty", ChatErrorKind.generic,
            spec.provider_name, True,
        ))
    # a summary never takes more of the window than one step's output may
    return text[: spec.max_output_tokens * 4], finished


def _replace_history(run: TurnRun, summary_id: int, through_id: int, content: list[dict[str, Any]]) -> None:
    """The prompt after a summary: the system prompt, the new summary, and
    the messages it does not cover."""
    claim = run.claim
    head = [m for m in claim.messages[:1] if m.get("role") == "system" and not m.get("summary")]
    rest = [m for m in claim.messages[len(head):] if not m.get("summary") and int(m["id"]) > through_id]
    claim.messages = [
        *head,
        {"id": summary_id, "role": "system", "content": content, "summary": True, "summary_through_id": through_id},
        *rest,
    ]
