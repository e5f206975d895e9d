"""The OpenAI Responses API wire: `response.created`, output items with their
reasoning-summary and text deltas, then the terminal `response.completed`
(or `response.incomplete`); `response.failed` or an `error` event for an
in-stream error; or one whole response."""

from __future__ import annotations

import time
from typing import Any

from chatd.testing.fakellm.frames import Totals, sse

#: finish reasons a script may give -> the response.incomplete reason
_INCOMPLETE = {
    "length": "max_output_tokens",
    "max_output_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "content_filter": "content_filter",
}


class ResponsesWire:
    """Responses API stream events."""

    def __init__(self, rid: str, model: str, send_usage: bool = True) -> None:
        self.rid, self.model, self.send_usage = rid, model, send_usage
        self.created = int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # finished output items
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.open_text = ""

    def _event(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        return sse(kind, {"type": kind, "sequence_number": self.seq, **fields})

    def _response(self, status: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": self.rid,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": list(self.output),
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": None,
            "incomplete_details": None,
            "usage": None,
            **fields,
        }

    def _open_item(self, kind: str) -> list[bytes]:
        frames = self._close_item()
        index = len(self.output)
        if kind == "reasoning":
            item: dict[str, Any] = {"id": f"rs_{index}", "type": "reasoning", "summary": []}
            part_event = self._event(
                "response.reasoning_summary_part.added",
                item_id=item["id"], output_index=index, summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        else:
            item = {"id": f"msg_{index}", "type": "message", "role": "assistant",
                    "status": "in_progress", "content": []}
            part_event = self._event(
                "response.content_part.added",
                item_id=item["id"], output_index=index, content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        self.open, self.open_text = item, ""
        frames.append(self._event("response.output_item.added", output_index=index, item=item))
        frames.append(part_event)
        return frames

    def _close_item(self) -> list[bytes]:
        item, text = self.open, self.open_text
        if item is None:
            return []
        index = len(self.output)
        if item["type"] == "reasoning":
            part: dict[str, Any] = {"type": "summary_text", "text": text}
            item = {**item, "summary": [part]}
            frames = [
                self._event("response.reasoning_summary_text.done", item_id=item["id"],
                            output_index=index, summary_index=0, text=text),
                self._event("response.reasoning_summary_part.done", item_id=item["id"],
                            output_index=index, summary_index=0, part=part),
            ]
        else:
            part = {"type": "output_text", "text": text, "annotations": []}
            item = {**item, "status": "completed", "content": [part]}
            frames = [
                self._event("response.output_text.done", item_id=item["id"], output_index=index,
                            content_index=0, text=text),
                self._event("response.content_part.done", item_id=item["id"],
                            output_index=index, content_index=0, part=part),
            ]
        frames.append(self._event("response.output_item.done", output_index=index, item=item))
        self.output.append(item)
        self.open = None
        return frames

    def start(self) -> list[bytes]:
        return [
            self._event("response.created", response=self._response("in_progress")),
            self._event("response.in_progress", response=self._response("in_progress")),
        ]

    def reasoning(self, piece: str) -> list[bytes]:
        frames = self._open_item("reasoning") if self._open_kind() != "reasoning" else []
        self.open_text += piece
        return [*frames, self._event(
            "response.reasoning_summary_text.delta", item_id=self._open_id(),
            output_index=len(self.output), summary_index=0, delta=piece,
        )]

    def text(self, piece: str) -> list[bytes]:
        frames = self._open_item("message") if self._open_kind() != "message" else []
        self.open_text += piece
        return [*frames, self._event(
            "response.output_text.delta", item_id=self._open_id(),
            output_index=len(self.output), content_index=0, delta=piece,
        )]

    def error(self, error_type: str, message: str | None, event: str = "response.failed") -> list[bytes]:
        text = message or f"fake error {error_type}"
        if event == "error":
            return [self._event("error", code=error_type, message=text, param=None)]
        error = {"code": error_type, "message": text}
        return [self._event("response.failed", response=self._response("failed", error=error))]

    def finish(self, totals: Totals, finish_reason: str | None) -> list[bytes]:
        """[the open item's done events, the terminal event] (two frames, so
        a cut after the first leaves out only the terminal event)."""
        # (an SSE comment when no item is open: an empty HTTP chunk would end the body)
        done = b"".join(self._close_item()) or b": done\n\n"
        usage = totals.responses() if self.send_usage else None
        incomplete = _INCOMPLETE.get(finish_reason or "")
        if incomplete is None:
            terminal = self._event(
                "response.completed", response=self._response("completed", usage=usage)
            )
        else:
            terminal = self._event(
                "response.incomplete",
                response=self._response(
                    "incomplete", usage=usage, incomplete_details={"reason": incomplete}
                ),
            )
        return [done, terminal]

    def whole(self, text: str, reasoning: str, totals: Totals, finish: str | None) -> Any:
        if reasoning:
            self._open_item("reasoning")
            self.open_text = reasoning
        self._open_item("message")
        self.open_text = text
        self._close_item()
        incomplete = _INCOMPLETE.get(finish or "")
        return self._response(
            "completed" if incomplete is None else "incomplete",
            usage=totals.responses(),
            incomplete_details=None if incomplete is None else {"reason": incomplete},
        )

    def _open_kind(self) -> str | None:
        return None if self.open is None else str(self.open["type"])

    def _open_id(self) -> str:
        return "" if self.open is None else str(self.open["id"])
