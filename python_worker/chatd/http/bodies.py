"""Request parsing: every input is hostile. A body over the size limit,
malformed JSON, a wrong type, an unknown field or an id that is not a UUID
is a clear problem (400 / 413 / 415 / 422), never a 500."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from starlette.requests import Request

from chatd.http.problems import Problem

__all__ = ["Field", "bounded_int", "parse_uuid", "read_json"]

#: field name -> (accepted JSON types, required); UUID: a string holding one
Field = tuple[tuple[type, ...], bool]


def invalid(detail: str, status: int = 422) -> Problem:
    return Problem(status, "invalid-input", "Invalid input", detail)


def parse_uuid(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise invalid(f"{what} is not a UUID: {value[:80]!r}", 400) from None


def bounded_int(value: str | None, what: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise invalid(f"{what} is not an integer", 400) from None
    if not low <= number <= high:
        raise invalid(f"{what} must be between {low} and {high}", 400)
    return number


async def read_json(request: Request, max_bytes: int, spec: Mapping[str, Field]) -> dict[str, Any]:
    """The JSON object body, checked against ``spec``; the size limit holds
    while reading (a lying or missing Content-Length changes nothing)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise Problem(415, "unsupported-media-type", "Unsupported media type",
                      "send the body as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise Problem(413, "too-large", "Request body too large", f"the limit is {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise Problem(413, "too-large", "Request body too large", f"the limit is {max_bytes} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError):
        raise invalid("the body is not valid JSON", 400) from None
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}")
    for name, (types, required) in spec.items():
        if name not in body or body[name] is None:
            if required:
                raise invalid(f"field {name} is required")
            body.pop(name, None)
            continue
        value = body[name]
        if UUID in types:  # a UUID arrives as a string
            if not isinstance(value, str):
                raise invalid(f"field {name} must be a UUID string")
            body[name] = parse_uuid(value, f"field {name}")
            continue
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise invalid(f"field {name} has the wrong type")
    return body
