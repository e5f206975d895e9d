"""`create_app`: the chats API (docs/http.md). Every request authenticates,
then makes one SQL function call through `chatd.client.Client`; a chatd
error becomes a problem response through the one table of problems.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import resources
from typing import Any, Final
from uuid import UUID

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from chatd.client import ChatdError, Client
from chatd.http.auth import Authenticator, Identity, Unauthenticated, authenticator_from_settings
from chatd.http.bodies import Field, bounded_int, invalid, parse_uuid, read_json
from chatd.http.openapi import OPENAPI_PATH, openapi_document
from chatd.http.problems import Problem, from_chatd_error, problem_response
from chatd.http.settings import ServeSettings
from chatd.http.sse import Cursor, EventStream, to_jsonable
from chatd.protocol import queries

__all__ = ["create_app"]

log = logging.getLogger("chatd.http")

STATIC: Final = resources.files("chatd.http") / "static"

Content = (str, list)
CREATE_CHAT: Final[dict[str, Field]] = {
    "content": (Content, True), "title": ((str,), False), "model_config_id": ((UUID,), False),
    "system_prompt": ((str,), False), "tools": ((list,), False), "agents": ((bool,), False),
}
SEND_MESSAGE: Final[dict[str, Field]] = {
    "content": (Content, True), "busy_behavior": ((str,), False), "model_config_id": ((UUID,), False),
    "tools": ((list,), False),
}
EDIT_MESSAGE: Final[dict[str, Field]] = {"content": (Content, True), "model_config_id": ((UUID,), False)}
TOOL_RESULTS: Final[dict[str, Field]] = {"results": ((list,), True)}


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(to_jsonable(data), status_code=status)


class _Api:
    def __init__(self, settings: ServeSettings, client: Client | None, auth: Authenticator) -> None:
        self.settings = settings
        self._client = client
        self._own_client = client is None
        self._lock = asyncio.Lock()
        self.auth = auth

    async def client(self) -> Client:
        """The client, opened on first use (a mounted app gets no lifespan)."""
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    if not self.settings.database_url:
                        raise RuntimeError("chatd serve: no database (CHATD_DATABASE_URL)")
                    self._client = await Client.connect(
                        self.settings.database_url, timeout=self.settings.db_timeout,
                        max_size=self.settings.pool_size, application_name="chatd-serve",
                        read_dsn=self.settings.read_database_url or None,
                        read_max_staleness=self.settings.read_max_staleness,
                    )
        return self._client

    async def close(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.close()
            self._client = None

    async def who(self, request: Request) -> Identity:
        return await self.auth(request)

    @staticmethod
    def chat_id(request: Request) -> UUID:
        return parse_uuid(request.path_params["chat_id"], "chat id")

    # ---------------------------------------------------------------- resources

    async def create_chat(self, request: Request) -> Response:
        me = await self.who(request)
        body = await read_json(request, self.settings.max_body_bytes, CREATE_CHAT)
        if me.organization_id is None:
            raise invalid("the identity carries no organization", 400)
        chat = await (await self.client()).create_chat(
            me.user_id, me.organization_id, body["content"], title=body.get("title"),
            model_config_id=body.get("model_config_id"), system_prompt=body.get("system_prompt"),
            client_type="api", tools=body.get("tools"), agents=body.get("agents"),
        )
        return _json({"id": chat}, 201)

    async def list_chats(self, request: Request) -> Response:
        me = await self.who(request)
        q = request.query_params
        limit = bounded_int(q.get("limit"), "limit", 50, 1, 200)
        archived = q.get("include_archived", "false").lower()
        if archived not in ("true", "false"):
            raise invalid("include_archived must be true or false", 400)
        before: datetime | None = None
        if q.get("before"):
            try:
                before = datetime.fromisoformat(q["before"])
            except ValueError:
                raise invalid("before is not an ISO 8601 timestamp", 400) from None
        before_id = parse_uuid(q["before_id"], "before_id") if q.get("before_id") else None
        rows = await (await self.client()).list_chats(
            me.user_id, me.organization_id, include_archived=archived == "true", limit=limit,
            before=before, before_id=before_id,
        )
        last = rows[-1] if len(rows) == limit else None
        nxt = {"before": last.updated_at, "before_id": last.id} if last else None
        return _json({"chats": [dict(r.raw) for r in rows], "next": nxt})

    async def get_chat(self, request: Request) -> Response:
        me = await self.who(request)
        q = request.query_params
        newest = bounded_int(q.get("newest"), "newest", 50, 1, 1000) if "newest" in q else None
        snap = await (await self.client()).snapshot(me.user_id, self.chat_id(request), newest=newest)
        raw = dict(snap.raw)
        return _json({k: raw.get(k) for k in ("chat", "messages", "before", "queue", "children", "parts", "parts_lease")})

    async def list_messages(self, request: Request) -> Response:
        me = await self.who(request)
        q = request.query_params
        limit = bounded_int(q.get("limit"), "limit", 50, 1, 1000)
        if "before" in q:
            if "after" in q:
                raise invalid("pass either before or after, not both", 400)
            before = bounded_int(q.get("before") or None, "before", 2**62, 1, 2**62)
            rows = await (await self.client()).read(
                queries.GET_MESSAGES_BEFORE, [me.user_id, self.chat_id(request), before, limit],
            )
            page = rows[0][0] if rows and isinstance(rows[0][0], dict) else {}
            return _json({"messages": page.get("messages") or [], "more": bool(page.get("more")),
                          "before": page.get("before")})
        after = bounded_int(q.get("after"), "after", 0, 0, 2**62)
        rows = await (await self.client()).read(
            queries.GET_MESSAGES_PAGE, [me.user_id, self.chat_id(request), after, limit],
        )
        page = rows[0][0] if rows and isinstance(rows[0][0], dict) else {}
        return _json({"messages": page.get("messages") or [], "more": bool(page.get("messages_more"))})

    async def send_message(self, request: Request) -> Response:
        me = await self.who(request)
        chat = self.chat_id(request)
        body = await read_json(request, self.settings.max_body_bytes, SEND_MESSAGE)
        result = await (await self.client()).send_message(
            me.user_id, chat, body["content"], busy_behavior=body.get("busy_behavior", "queue"),
            model_config_id=body.get("model_config_id"), tools=body.get("tools"),
        )
        return _json(result, 202)

    async def edit_message(self, request: Request) -> Response:
        me = await self.who(request)
        chat = self.chat_id(request)
        message = bounded_int(request.path_params["message_id"], "message id", 0, 1, 2**62)
        body = await read_json(request, self.settings.max_body_bytes, EDIT_MESSAGE)
        result = await (await self.client()).edit_message(
            me.user_id, chat, message, body["content"], model_config_id=body.get("model_config_id"),
        )
        return _json({"result": result}, 202)

    async def submit_tool_results(self, request: Request) -> Response:
        me = await self.who(request)
        chat = self.chat_id(request)
        body = await read_json(request, self.settings.max_body_bytes, TOOL_RESULTS)
        results = body["results"]
        if not results or not all(isinstance(r, dict) for r in results):
            raise invalid("field results must be a non-empty list of objects "
                          "{tool_call_id, output, is_error}")
        # the shape of each result is checked by chatd.submit_tool_results (CD007)
        result = await (await self.client()).submit_tool_results(me.user_id, chat, results)
        return _json({"result": result}, 202)

    def _simple(self, call: str) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            me = await self.who(request)
            chat = self.chat_id(request)
            await _no_body(request)
            result = await getattr(await self.client(), call)(me.user_id, chat)
            return _json({"result": result})
        return handler

    async def usage(self, request: Request) -> Response:
        me = await self.who(request)
        rows = await (await self.client()).fetch(queries.APP_USAGE, [me.user_id, me.organization_id])
        keys = ("limit_micros", "source", "spent_micros", "period_start", "resets_at")
        return _json(dict(zip(keys, rows[0], strict=True)) if rows else dict.fromkeys(keys))

    async def models(self, request: Request) -> Response:
        me = await self.who(request)
        rows = await (await self.client()).fetch(queries.APP_LIST_MODELS, [me.user_id])
        return _json({"models": [r[0] for r in rows]})

    async def stream(self, request: Request) -> Response:
        me = await self.who(request)
        chat = self.chat_id(request)
        cursor = Cursor.parse(request.headers.get("last-event-id") or request.query_params.get("last_event_id"))
        events = EventStream(
            await self.client(), me.user_id, chat, cursor,
            buffer=self.settings.stream_buffer, keepalive=self.settings.keepalive_seconds,
        )
        try:
            await events.open()
        except BaseException:
            await events.close()
            raise
        return StreamingResponse(
            events.frames(), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


async def _no_body(request: Request) -> None:
    async for chunk in request.stream():
        if chunk:
            raise invalid("this request takes no body", 400)


async def _on_problem(request: Request, exc: Exception) -> Response:
    if isinstance(exc, Problem):
        return problem_response(exc, request.url.path)
    if isinstance(exc, ChatdError):
        return problem_response(from_chatd_error(exc), request.url.path)
    if isinstance(exc, Unauthenticated):
        return problem_response(Problem(401, "unauthenticated", "Unauthenticated", str(exc)), request.url.path)
    if isinstance(exc, HTTPException):
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http")
        return problem_response(Problem(exc.status_code, slug, str(exc.detail)), request.url.path)
    log.exception("chatd serve: %s %s failed", request.method, request.url.path)
    return problem_response(Problem(500, "internal", "Internal error"), request.url.path)


def create_app(
    settings: ServeSettings | None = None,
    *,
    client: Client | None = None,
    authenticator: Authenticator | None = None,
) -> Starlette:
    """The chats API as an ASGI app. ``client``: an open Client to use (else
    one is opened from ``settings.database_url`` on first use and closed at
    shutdown); ``authenticator``: any `Authenticator` (e.g. ``HookAuth`` over
    the mounting application's session), else one from the settings."""
    settings = settings or ServeSettings.from_env()
    api = _Api(settings, client, authenticator or authenticator_from_settings(settings))
    chat = "/api/chats/{chat_id}"
    routes = [
        Route("/", lambda r: FileResponse(str(STATIC / "index.html")), methods=["GET"]),
        Route(OPENAPI_PATH, lambda r: JSONResponse(openapi_document()), methods=["GET"]),
        Route("/api/chats", api.create_chat, methods=["POST"]),
        Route("/api/chats", api.list_chats, methods=["GET"]),
        Route(chat, api.get_chat, methods=["GET"]),
        Route(chat + "/messages", api.list_messages, methods=["GET"]),
        Route(chat + "/messages", api.send_message, methods=["POST"]),
        Route(chat + "/messages/{message_id}", api.edit_message, methods=["PATCH"]),
        Route(chat + "/tool-results", api.submit_tool_results, methods=["POST"]),
        Route(chat + "/interrupt", api._simple("interrupt"), methods=["POST"]),
        Route(chat + "/archive", api._simple("archive"), methods=["POST"]),
        Route(chat + "/unarchive", api._simple("unarchive"), methods=["POST"]),
        Route(chat + "/stream", api.stream, methods=["GET"]),
        Route("/api/usage", api.usage, methods=["GET"]),
        Route("/api/models", api.models, methods=["GET"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await api.close()

    handlers: dict[Any, Any] = {
        Problem: _on_problem, ChatdError: _on_problem, Unauthenticated: _on_problem,
        HTTPException: _on_problem, Exception: _on_problem,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.chatd = api
    return app
