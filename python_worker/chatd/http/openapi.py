"""The OpenAPI 3.1 document of `chatd serve`, served at `OPENAPI_PATH`;
tests/python/test_http.py checks it names exactly the routes of the app."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["OPENAPI_PATH", "openapi_document"]

OPENAPI_PATH: Final = "/api/openapi.json"

_CHAT: Final = {"name": "chat_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}}
_PROBLEM: Final = {"description": "problem details (RFC 9457)",
                   "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
_CONTENT: Final = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]}


def _query(name: str, kind: str = "string", fmt: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind}
    if fmt:
        schema["format"] = fmt
    return {"name": name, "in": "query", "required": False, "schema": schema}


#: client tool definitions (docs/tools.md); SQL validates them (CD007)
_TOOLS: dict[str, Any] = {"type": "array", "items": {
    "type": "object", "required": ["name", "input_schema"], "properties": {
        "name": {"type": "string"}, "description": {"type": "string"},
        "input_schema": {"type": "object"}}}}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "additionalProperties": False, "properties": properties, "required": required}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, status: str = "200", *, params: list[Any] | None = None,
        body: dict[str, Any] | None = None, media: str = "application/json") -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params or [],
        "responses": {status: {"description": "success", "content": {media: {}}}, "default": _PROBLEM},
    }
    if body is not None:
        op["requestBody"] = body
    return op


_UUID: Final = {"type": "string", "format": "uuid"}


def openapi_document() -> dict[str, Any]:
    # Long on purpose: the whole document as one literal reads like the API it
    # describes (one entry per route of app.py), which splitting would hide.
    chat = "/api/chats/{chat_id}"
    return {
        "openapi": "3.1.0",
        "info": {"title": "chatd", "version": "1", "description": "docs/http.md"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Problem": {"type": "object", "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "instance": {"type": "string"}, "sqlstate": {"type": "string"},
                "kind": {"type": "string"}, "spent_micros": {"type": "integer"},
                "limit_micros": {"type": "integer"}, "resets_at": {"type": "string"},
            }}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/": {"get": _op("the web page", media="text/html")},
            OPENAPI_PATH: {"get": _op("this document")},
            "/api/chats": {
                "post": _op("create a chat with its first message", "201", body=_body({
                    "content": _CONTENT, "title": {"type": "string"}, "model_config_id": _UUID,
                    "system_prompt": {"type": "string"}, "tools": _TOOLS, "agents": {"type": "boolean"}},
                    ["content"])),
                "get": _op("the user's chats, most recently updated first", params=[
                    _query("limit", "integer"), _query("include_archived", "boolean"),
                    _query("before", fmt="date-time"), _query("before_id", fmt="uuid")]),
            },
            chat: {"get": _op("snapshot: chat, messages (newest=N: only the newest N, with the before "
                              "cursor), queue, sub-agent chats, parts of the running turn",
                              params=[_CHAT, _query("newest", "integer")])},
            chat + "/messages": {
                "get": _op("messages after a message id, or (before=) the page before one, newest "
                           "pages first", params=[
                    _CHAT, _query("after", "integer"), _query("before", "integer"), _query("limit", "integer")]),
                "post": _op("send a message (runs, or is queued; busy_behavior interrupt)", "202",
                            params=[_CHAT], body=_body({
                                "content": _CONTENT, "busy_behavior": {"enum": ["queue", "interrupt"]},
                                "model_config_id": _UUID, "tools": _TOOLS}, ["content"])),
            },
            chat + "/messages/{message_id}": {"patch": _op(
                "edit a user message: it and what follows are replaced", "202",
                params=[_CHAT, {"name": "message_id", "in": "path", "required": True,
                                "schema": {"type": "integer"}}],
                body=_body({"content": _CONTENT, "model_config_id": _UUID}, ["content"]))},
            chat + "/tool-results": {"post": _op(
                "answer pending client tool calls (docs/tools.md); 409 tool-call-not-pending", "202",
                params=[_CHAT], body=_body({"results": {"type": "array", "items": {
                    "type": "object", "required": ["tool_call_id", "output"], "properties": {
                        "tool_call_id": {"type": "string"}, "output": {},
                        "is_error": {"type": "boolean"}}}}}, ["results"]))},
            chat + "/interrupt": {"post": _op("interrupt the running turn", params=[_CHAT])},
            chat + "/archive": {"post": _op("archive the chat (and its sub-agents)", params=[_CHAT])},
            chat + "/unarchive": {"post": _op("unarchive the chat", params=[_CHAT])},
            chat + "/stream": {"get": _op(
                "Server-Sent Events; resume with Last-Event-ID", media="text/event-stream",
                params=[_CHAT, {"name": "Last-Event-ID", "in": "header", "required": False,
                                "schema": {"type": "string"}}])},
            "/api/usage": {"get": _op("spend of the current period and its limit")},
            "/api/models": {"get": _op("the enabled models")},
        },
    }
