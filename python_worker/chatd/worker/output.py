"""What a turn has produced so far (`Output`: text, reasoning, the tool
calls of the current step, and the parts not yet published) and the usage
object chatd's SQL takes (`usage_json`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chatd.llm import Finished, ToolCallDelta, ToolCallStart
from chatd.worker.tools import StepCalls

__all__ = ["Output", "usage_json"]


@dataclass
class Output:
    """What a turn has produced so far, and what is not yet published."""

    reasoning: list[str] = field(default_factory=list)
    # reasoning blocks the provider sealed (signature or redacted data), in order
    sealed: list[dict[str, str]] = field(default_factory=list)
    unsealed_from: int = 0  # the index in `reasoning` after the last sealed block
    text: list[str] = field(default_factory=list)
    pending: list[dict[str, str]] = field(default_factory=list)
    pending_bytes: int = 0
    calls: StepCalls = field(default_factory=StepCalls)

    def add_call(self, event: ToolCallStart | ToolCallDelta) -> None:
        part = self.calls.feed(event)
        self.pending.append(part)
        self.pending_bytes += len(str(part))

    def add(self, kind: str, delta: str) -> None:
        (self.text if kind == "text" else self.reasoning).append(delta)
        if self.pending and self.pending[-1]["type"] == kind:
            self.pending[-1]["text"] += delta  # coalesce adjacent deltas
        else:
            self.pending.append({"type": kind, "text": delta})
        self.pending_bytes += len(delta.encode())

    def seal(self, signature: str | None = None, redacted: str | None = None) -> None:
        """Closes the reasoning streamed since the last seal with the
        provider's signature, or records a redacted block: each becomes its
        own reasoning part, carrying what the provider needs back."""
        if redacted is not None:
            self.sealed.append({"type": "reasoning", "text": "", "redacted": redacted})
            return
        text = "".join(self.reasoning[self.unsealed_from:])
        self.unsealed_from = len(self.reasoning)
        self.sealed.append({"type": "reasoning", "text": text, "signature": signature or ""})

    def content(self) -> list[dict[str, str]]:
        parts = list(self.sealed)
        rest = "".join(self.reasoning[self.unsealed_from:])
        if rest:
            parts.append({"type": "reasoning", "text": rest})
        text = "".join(self.text)
        if text:  # chatd refuses an empty text part (CD007)
            parts.append({"type": "text", "text": text})
        return parts


def usage_json(finished: Finished | None) -> dict[str, Any]:
    if finished is None:
        return {}
    usage = finished.usage
    values = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    counts: dict[str, Any] = {k: v for k, v in values.items() if v is not None}
    if usage.estimated:
        counts["estimated"] = True  # messages.usage_estimated
    return counts
