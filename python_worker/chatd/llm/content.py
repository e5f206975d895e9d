"""Prompt content shared by the provider wires: chatd's jsonb parts (text,
reasoning, file, tool-call, tool-result) read leniently.

A turn that offers tools (docs/tools.md) sends tool calls and results in
the wire's native format. Without tools, both APIs reject tool-call
history, so tool calls and tool results are rendered as plain text: the
model still sees what happened, and the request stays valid."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["file_placeholder", "file_source", "first", "output_text", "parts", "tool_text"]


def first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def count_attr(obj: object, name: str) -> int | None:
    """An integer attribute of an SDK object; None when absent or not an int
    (older SDKs' types lack newer fields: no attribute access may escape)."""
    value = getattr(obj, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parts(content: Sequence[Mapping[str, Any]] | str) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content if isinstance(p, Mapping)]


def tool_text(part: Mapping[str, Any]) -> str | None:
    """Plain-text rendering of a tool-call / tool-result part."""
    name = part.get("tool_name") or part.get("toolName") or part.get("name") or "tool"
    if part.get("type") == "tool-call":
        args = part.get("args", part.get("input", part.get("arguments", {})))
        rendered = args if isinstance(args, str) else json.dumps(args, sort_keys=True)
        return f"[tool call {name}({rendered})]"
    if part.get("type") == "tool-result":
        result = part.get("result", part.get("output", part.get("content", "")))
        rendered = result if isinstance(result, str) else json.dumps(result, sort_keys=True)
        return f"[tool result {name}: {rendered}]"
    return None


def output_text(part: Mapping[str, Any]) -> str:
    """A tool-result part's output as the text a provider takes."""
    output = part.get("output", "")
    return output if isinstance(output, str) else json.dumps(output, sort_keys=True)


def file_source(part: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    """(media_type, base64 data, url) of a file part."""
    media_type = str(part.get("media_type") or part.get("mediaType") or part.get("mime_type") or "")
    data = part.get("data")
    url = part.get("url")
    return (
        media_type,
        data if isinstance(data, str) else None,
        url if isinstance(url, str) else None,
    )


def file_placeholder(part: Mapping[str, Any]) -> str:
    media_type, _, _ = file_source(part)
    return (
        f"[attached file {part.get('name') or part.get('filename') or ''} ({media_type}) omitted]"
    )
