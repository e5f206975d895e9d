"""`chatd serve` over real HTTP (uvicorn on 127.0.0.1) against a real
PostgreSQL, a real worker and the fake LLM: every resource, every error
mapping, authentication, and the SSE stream (resume, replicas, ends)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID, uuid4

import httpx
import psycopg
import pytest
from http_support import SECRET, Sse, bearer, serving, serving_app, sse_events
from psycopg.types.json import Jsonb
from starlette.routing import Mount, Route
from worker_support import running_worker, status_is, wait_until, worker_config

from chatd.client import Client
from chatd.http import ServeSettings, create_app
from chatd.http.openapi import openapi_document
from chatd.http.problems import SQLSTATE_STATUS
from chatd.http.sse import Cursor, EventStream
from chatd.protocol import names
from chatd.protocol.errors import ChatdError
from chatd.testing import Factory, FakeLLM, Text

WAIT = 20.0


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def who(factory: Factory, fake: FakeLLM) -> tuple[UUID, UUID, UUID]:
    """(user, org, default model served by the fake LLM)."""
    org = factory.org()
    user = factory.user(org=org)
    provider = factory.provider(kind="openai-compat", base_url=fake.openai_base_url)
    model = factory.model_config(provider=provider, is_default=True)
    return user, org, model


@pytest.fixture
async def api(db: str, who: tuple[UUID, UUID, UUID]) -> AsyncIterator[httpx.AsyncClient]:
    user, org, _ = who
    async with serving(db) as url, httpx.AsyncClient(base_url=url, headers=bearer(user, org), timeout=WAIT) as http:
        yield http


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"] and body["title"]
    return body


async def until_event(stream: AsyncIterator[Sse], event: str, seen: list[Sse] | None = None) -> Sse:
    async with asyncio.timeout(WAIT):
        async for item in stream:
            if seen is not None:
                seen.append(item)
            if item.event == event:
                return item
    raise AssertionError(f"stream ended before a {event} event")


# ---------------------------------------------------------------- document and routes


def test_the_openapi_document_names_exactly_the_routes() -> None:
    app = create_app(ServeSettings(database_url="postgresql://unused", jwt_secret=SECRET))
    routes = {
        (r.path, m.lower()) for r in app.routes if isinstance(r, Route) for m in (r.methods or ()) if m != "HEAD"
    }
    documented = {(p, m) for p, ops in openapi_document()["paths"].items() for m in ops}
    assert routes == documented
    assert any(isinstance(r, Mount) and r.path == "/static" for r in app.routes)


async def test_the_openapi_document_is_served(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/openapi.json")
    assert response.status_code == 200 and response.json()["openapi"].startswith("3.1")


async def test_serve_refuses_to_start_without_authentication() -> None:
    with pytest.raises(ValueError, match="no authentication configured"):
        create_app(ServeSettings(database_url="postgresql://unused"))


def test_every_setting_is_also_a_chatd_variable_and_flags_win() -> None:
    env = {"CHATD_PORT": "9001", "CHATD_JWT_SECRET": "s", "DATABASE_URL": "postgresql://a",
           "CHATD_MAX_BODY_BYTES": "10", "CHATD_KEEPALIVE_SECONDS": "2.5", "CHATD_HOST": "0.0.0.0"}
    settings = ServeSettings.from_env(env, host="127.0.0.2")
    assert (settings.port, settings.jwt_secret, settings.database_url) == (9001, "s", "postgresql://a")
    assert (settings.max_body_bytes, settings.keepalive_seconds, settings.host) == (10, 2.5, "127.0.0.2")
    with pytest.raises(ValueError, match="CHATD_PORT"):
        ServeSettings.from_env({"CHATD_PORT": "eighty"})


def test_chatd_serve_refuses_to_start_without_authentication(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from chatd.cli import main

    for name in ("CHATD_JWT_SECRET", "CHATD_JWT_PUBLIC_KEY", "CHATD_TRUSTED_USER_HEADER"):
        monkeypatch.delenv(name, raising=False)
    assert main(["serve", "--database-url", "postgresql://unused"]) == 2
    assert "no authentication configured" in capsys.readouterr().err


def test_every_sqlstate_has_one_status() -> None:
    assert {s: v[0] for s, v in SQLSTATE_STATUS.items()} == {
        names.CHAT_NOT_FOUND: 404, names.FORBIDDEN: 404, names.INVALID_TRANSITION: 409,
        names.LEASE_LOST: 409, names.QUEUE_FULL: 429, names.USAGE_LIMIT_EXCEEDED: 409,
        names.INVALID_INPUT: 422, names.CHAT_ARCHIVED: 409, names.TOOL_CALL_NOT_PENDING: 409,
    }


# ---------------------------------------------------------------- resources


async def test_a_chat_is_created_answered_and_read_back(
    db: str, api: httpx.AsyncClient, fake: FakeLLM, who: tuple[UUID, UUID, UUID]
) -> None:
    fake.script(Text("hello from the fake", chunks=4))
    created = await api.post("/api/chats", json={"content": "hi there", "title": "first"})
    assert created.status_code == 201, created.text
    chat = UUID(created.json()["id"])
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the answer")
    snap = (await api.get(f"/api/chats/{chat}")).json()
    assert snap["chat"]["status"] == "waiting" and snap["chat"]["title"] == "first"
    assert [m["role"] for m in snap["messages"]] == ["user", "assistant"]
    listed = (await api.get("/api/chats", params={"limit": 1})).json()
    assert [c["id"] for c in listed["chats"]] == [str(chat)] and listed["next"]["before_id"] == str(chat)
    page = (await api.get(f"/api/chats/{chat}/messages", params={"after": 0, "limit": 1})).json()
    assert len(page["messages"]) == 1 and page["more"] is True
    models = (await api.get("/api/models")).json()["models"]
    assert [m["id"] for m in models] == [str(who[2])] and "api_key_env" not in models[0]
    usage = (await api.get("/api/usage")).json()
    assert set(usage) == {"limit_micros", "source", "spent_micros", "period_start", "resets_at"}


async def test_send_edit_interrupt_archive_and_unarchive(
    db: str, api: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    chat = (await api.post("/api/chats", json={"content": "one"})).json()["id"]
    queued = await api.post(f"/api/chats/{chat}/messages", json={"content": "two", "busy_behavior": "queue"})
    assert queued.status_code == 202, queued.text
    snap = (await api.get(f"/api/chats/{chat}")).json()
    assert [q["content"][0]["text"] for q in snap["queue"]] == ["two"]
    first = snap["messages"][0]["id"]
    edited = await api.patch(f"/api/chats/{chat}/messages/{first}", json={"content": "one, edited"})
    assert edited.status_code == 202, edited.text
    snap = (await api.get(f"/api/chats/{chat}")).json()
    assert [m["content"][0]["text"] for m in snap["messages"]] == ["one, edited"]
    conn.execute("SELECT chatd.acquire_chats('w1', 10)")
    assert (await api.post(f"/api/chats/{chat}/interrupt")).status_code == 200
    assert (await api.post(f"/api/chats/{chat}/archive")).status_code == 200
    assert (await api.get(f"/api/chats/{chat}")).json()["chat"]["archived"] is True
    assert (await api.post(f"/api/chats/{chat}/unarchive")).status_code == 200
    assert (await api.get(f"/api/chats/{chat}")).json()["chat"]["archived"] is False


# ---------------------------------------------------------------- errors


async def test_another_users_chat_and_a_missing_chat_are_the_same_404(
    api: httpx.AsyncClient, factory: Factory
) -> None:
    other_org = factory.org()
    other = factory.chat(factory.user(org=other_org), org=other_org)
    theirs = problem(await api.get(f"/api/chats/{other}"), 404)
    missing = problem(await api.get(f"/api/chats/{uuid4()}"), 404)
    assert (theirs["type"], theirs["detail"]) == (missing["type"], missing["detail"])
    problem(await api.post(f"/api/chats/{other}/archive"), 404)


@pytest.mark.parametrize(("send", "status", "words"), [
    (lambda a: a.get("/api/chats/not-a-uuid"), 400, "not a UUID"),
    (lambda a: a.post("/api/chats", content=b"{nope", headers={"content-type": "application/json"}), 400, "JSON"),
    (lambda a: a.post("/api/chats", json={"content": "x", "admin": True}), 422, "unknown field"),
    (lambda a: a.post("/api/chats", json={"content": 5}), 422, "wrong type"),
    (lambda a: a.post("/api/chats", json={}), 422, "required"),
    (lambda a: a.post("/api/chats", json=["content"]), 422, "JSON object"),
    (lambda a: a.post("/api/chats", json={"content": "x", "model_config_id": "abc"}), 400, "not a UUID"),
    (lambda a: a.post("/api/chats", content=b"content=x"), 415, "application/json"),
    (lambda a: a.post("/api/chats", json={"content": "x" * 300_000}), 413, "limit"),
    (lambda a: a.post("/api/chats", json={"content": ""}), 422, ""),
    (lambda a: a.post("/api/chats", json={"content": "x", "model_config_id": str(uuid4())}), 422, ""),
    (lambda a: a.get("/api/chats", params={"limit": "many"}), 400, "integer"),
    (lambda a: a.get("/api/nothing"), 404, ""),
    (lambda a: a.delete("/api/chats"), 405, ""),
], ids=["non-uuid-id", "malformed-json", "unknown-field", "wrong-type", "missing-field", "not-an-object",
        "non-uuid-field", "wrong-media-type", "too-large", "empty-content", "unknown-model", "bad-limit",
        "unknown-path", "wrong-method"])
async def test_bad_input_is_a_problem_and_writes_nothing(
    api: httpx.AsyncClient, conn: psycopg.Connection[Any], send: Any, status: int, words: str
) -> None:
    body = problem(await send(api), status)
    assert words in body.get("detail", "") + body["title"]
    assert conn.execute("SELECT count(*) FROM chatd.chats").fetchone() == (0,)


async def test_a_full_queue_is_429(api: httpx.AsyncClient, conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE chatd.settings SET queue_limit = 1")
    chat = (await api.post("/api/chats", json={"content": "one"})).json()["id"]
    assert (await api.post(f"/api/chats/{chat}/messages", json={"content": "two"})).status_code == 202
    body = problem(await api.post(f"/api/chats/{chat}/messages", json={"content": "three"}), 429)
    assert body["sqlstate"] == names.QUEUE_FULL


async def test_an_archived_chat_refuses_messages_with_409(api: httpx.AsyncClient) -> None:
    chat = (await api.post("/api/chats", json={"content": "one"})).json()["id"]
    await api.post(f"/api/chats/{chat}/archive")
    body = problem(await api.post(f"/api/chats/{chat}/messages", json={"content": "two"}), 409)
    assert body["sqlstate"] == names.CHAT_ARCHIVED


async def test_an_exceeded_spend_limit_is_409_usage_limit(
    api: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("SELECT chatd.admin_set_usage_limits(p_enabled => TRUE, p_default_limit_micros => 0)")
    body = problem(await api.post("/api/chats", json={"content": "hi"}), 409)
    assert body["kind"] == "usage_limit" and body["limit_micros"] == 0 and body["spent_micros"] == 0
    assert body["resets_at"] and body["sqlstate"] == names.USAGE_LIMIT_EXCEEDED
    assert conn.execute("SELECT count(*) FROM chatd.chats").fetchone() == (0,)


def test_an_unmapped_chatd_sqlstate_is_a_500_problem() -> None:
    from chatd.http.problems import from_chatd_error
    assert from_chatd_error(ChatdError("x", sqlstate="CD999")).status == 500


# ---------------------------------------------------------------- authentication


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer not.a.jwt"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
], ids=["none", "garbage", "basic"])
async def test_requests_without_a_valid_token_are_401(
    db: str, who: tuple[UUID, UUID, UUID], headers: dict[str, str]
) -> None:
    async with serving(db) as url, httpx.AsyncClient(base_url=url) as http:
        body = problem(await http.get("/api/chats", headers=headers), 401)
    assert body["type"].endswith("unauthenticated")


async def test_a_forged_or_expired_token_is_401(db: str, who: tuple[UUID, UUID, UUID]) -> None:
    user, org, _ = who
    async with serving(db) as url, httpx.AsyncClient(base_url=url) as http:
        forged = problem(await http.get("/api/chats", headers=bearer(user, org, secret="x" * 40)), 401)
        expired = problem(await http.get("/api/chats", headers=bearer(user, org, ttl=-60)), 401)
    assert "signature" in forged["detail"].lower() and "expired" in expired["detail"]


async def test_a_token_for_another_organization_creates_nothing(
    db: str, who: tuple[UUID, UUID, UUID], factory: Factory, conn: psycopg.Connection[Any]
) -> None:
    user, _, _ = who
    async with serving(db) as url, httpx.AsyncClient(base_url=url, headers=bearer(user, factory.org())) as http:
        problem(await http.post("/api/chats", json={"content": "hi"}), 404)
        problem(await http.get("/api/usage"), 404)
    assert conn.execute("SELECT count(*) FROM chatd.chats").fetchone() == (0,)


async def test_trusted_header_mode_only_when_enabled(db: str, who: tuple[UUID, UUID, UUID]) -> None:
    user, org, _ = who
    headers = {"X-User": str(user), "X-Org": str(org)}
    async with serving(db) as url, httpx.AsyncClient(base_url=url) as http:
        problem(await http.get("/api/chats", headers=headers), 401)
    async with serving(db, trusted_user_header="X-User", trusted_org_header="X-Org") as url, \
            httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/api/chats", headers=headers)).status_code == 200


async def test_a_mounting_application_supplies_the_user_through_a_hook(
    db: str, who: tuple[UUID, UUID, UUID]
) -> None:
    from starlette.applications import Starlette

    from chatd.http import HookAuth, Identity
    from chatd.testing import as_role

    user, org, _ = who
    sessions = {"s3cret": Identity(user, org)}

    async def session_user(request: Any) -> Identity | None:
        return sessions.get(request.cookies.get("session", ""))

    api = create_app(ServeSettings(database_url=as_role(db, "app")), authenticator=HookAuth(session_user))
    parent = Starlette(routes=[Mount("/chat", app=api)])  # a mounted app gets no lifespan
    async with serving_app(parent) as url, httpx.AsyncClient(base_url=url + "/chat") as http:
        problem(await http.get("/api/chats"), 401)
        created = await http.post("/api/chats", json={"content": "hi"}, headers={"Cookie": "session=s3cret"})
        assert created.status_code == 201, created.text
    await api.state.chatd.close()


def test_token_issue_prints_a_token_for_the_given_ids(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import jwt

    from chatd.cli import main

    user, org = uuid4(), uuid4()
    monkeypatch.setenv("CHATD_JWT_SECRET", SECRET)
    assert main(["token", "issue", "--user", str(user), "--org", str(org), "--ttl", "60"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["org"]) == (str(user), str(org))
    assert 55 <= claims["exp"] - claims["iat"] <= 60


# ---------------------------------------------------------------- streaming


async def test_a_stream_carries_the_answer_and_resumes_without_loss_or_duplicates(
    db: str, api: httpx.AsyncClient, fake: FakeLLM
) -> None:
    words = [f"w{i} " for i in range(40)]
    fake.script(Text("".join(words), chunks=40, delay=0.05))
    chat = (await api.post("/api/chats", json={"content": "count"})).json()["id"]
    first: list[Sse] = []
    async with running_worker(worker_config(db)):
        async with api.stream("GET", f"/api/chats/{chat}/stream") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            while sum(e.event == "parts" for e in first) < 5:
                await until_event(events, "parts", first)
        # the connection dropped mid-stream; resume from the last id seen
        second: list[Sse] = []
        headers = {"Last-Event-ID": first[-1].id or ""}
        async with api.stream("GET", f"/api/chats/{chat}/stream", headers=headers) as response:
            events = sse_events(response)
            while True:
                item = await until_event(events, "message", second)
                if item.data["message"]["role"] == "assistant":
                    break
    parts = [(e.data["lease"], e.data["seq"]) for e in first + second if e.event == "parts"]
    assert len(parts) == len(set(parts)), "no part twice"
    assert [s for _, s in parts] == list(range(len(parts))), "no part lost before the last one seen"
    text = "".join(p["text"] for e in first + second if e.event == "parts" for p in e.data["parts"])
    assert "".join(words).startswith(text)
    assert [e.data["message"]["id"] for e in first + second if e.event == "message"] == sorted(
        {e.data["message"]["id"] for e in first + second if e.event == "message"}), "no message twice"
    assert second[-1].data["message"]["content"][0]["text"] == "".join(words)


async def test_a_chat_created_on_one_replica_streams_on_another(
    db: str, who: tuple[UUID, UUID, UUID], fake: FakeLLM
) -> None:
    user, org, _ = who
    fake.script(Text("from a worker anywhere", chunks=3))
    async with serving(db) as a, serving(db) as b, \
            httpx.AsyncClient(base_url=a, headers=bearer(user, org), timeout=WAIT) as on_a, \
            httpx.AsyncClient(base_url=b, headers=bearer(user, org), timeout=WAIT) as on_b:
        chat = (await on_a.post("/api/chats", json={"content": "hi"})).json()["id"]
        async with on_b.stream("GET", f"/api/chats/{chat}/stream") as response:
            events = sse_events(response)
            await until_event(events, "status")
            async with running_worker(worker_config(db)):
                seen: list[Sse] = []
                while True:
                    item = await until_event(events, "message", seen)
                    if item.data["message"]["role"] == "assistant":
                        break
    assert item.data["message"]["content"][0]["text"] == "from a worker anywhere"


async def test_a_stream_ends_when_the_chat_is_archived(api: httpx.AsyncClient) -> None:
    chat = (await api.post("/api/chats", json={"content": "hi"})).json()["id"]
    async with api.stream("GET", f"/api/chats/{chat}/stream") as response:
        events = sse_events(response)
        await until_event(events, "status")
        await api.post(f"/api/chats/{chat}/archive")
        end = await until_event(events, "end")
        assert end.data == {"reason": "archived"}
        assert [e async for e in events] == []


async def test_a_stream_ends_when_the_chat_is_deleted(
    api: httpx.AsyncClient, conn: psycopg.Connection[Any], who: tuple[UUID, UUID, UUID]
) -> None:
    chat = (await api.post("/api/chats", json={"content": "hi"})).json()["id"]
    async with api.stream("GET", f"/api/chats/{chat}/stream") as response:
        events = sse_events(response)
        await until_event(events, "status")
        conn.execute("SELECT chatd.delete_chat(%s, %s)", (who[0], chat))
        await until_event(events, "deleted")
        assert (await until_event(events, "end")).data == {"reason": "deleted"}


async def test_a_stream_of_another_users_chat_is_404(api: httpx.AsyncClient, factory: Factory) -> None:
    org = factory.org()
    other = factory.chat(factory.user(org=org), org=org)
    problem(await api.get(f"/api/chats/{other}/stream"), 404)
    problem(await api.get(f"/api/chats/{other}/stream", headers={"Last-Event-ID": "x"}), 400)


async def test_a_stream_sends_keep_alive_comments(api: httpx.AsyncClient) -> None:
    chat = (await api.post("/api/chats", json={"content": "hi"})).json()["id"]
    async with api.stream("GET", f"/api/chats/{chat}/stream") as response:
        async with asyncio.timeout(WAIT):
            async for line in response.aiter_lines():
                if line == ": keep-alive":
                    break


async def test_a_slow_reader_gets_a_resync_not_unbounded_memory(
    db: str, who: tuple[UUID, UUID, UUID], conn: psycopg.Connection[Any]
) -> None:
    """Explicit interleaving: the reader takes nothing while the turn
    publishes ten batches into a buffer of two; the pump stops at the bound;
    then the reader drains, gets a resync and every batch exactly once."""
    user, org, _ = who
    async with await Client.connect(db, max_size=4) as client:
        chat = await client.create_chat(user, org, "hi")
        stream = EventStream(client, user, chat, Cursor(), buffer=2, keepalive=30)
        await stream.open()
        lease = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 10)").fetchone()[0]
        for seq in range(10):
            conn.execute("SELECT chatd.publish_parts(%s, %s, %s, %s)",
                         (chat, lease, seq, Jsonb([{"type": "text", "text": f"{seq} "}])))
        assert stream._pump is not None
        async with asyncio.timeout(WAIT):
            await asyncio.shield(stream._pump)  # stopped at the bound: nothing more is buffered
        assert stream._queue.qsize() <= 3
        frames = stream.frames()
        seqs: list[int] = []
        async with asyncio.timeout(WAIT):
            async for frame in frames:
                if "event: parts" in frame:
                    seqs.append(json.loads(frame.split("data: ", 1)[1])["seq"])
                if seqs[-1:] == [9]:
                    break
        await frames.aclose()
    assert stream.resyncs >= 1 and seqs == list(range(10))


# ---------------------------------------------------------------- client tools


async def test_a_client_tool_is_defined_called_and_answered_over_http(
    db: str, api: httpx.AsyncClient, fake: FakeLLM
) -> None:
    ask = {"name": "ask_user", "description": "asks the user", "input_schema": {"type": "object"}}
    created = await api.post("/api/chats", json={"content": "what colour?", "tools": [ask]})
    assert created.status_code == 201, created.text
    chat = UUID(created.json()["id"])
    fake.script(Text("", tool_calls=({"id": "k1", "name": "ask_user", "input": {"q": "colour?"}},)),
                Text("blue it is"))
    async with running_worker(worker_config(db)):
        await wait_until(lambda: status_is(db, chat, "requires_action"), what="the client tool call")
        wrong = await api.post(f"/api/chats/{chat}/tool-results",
                               json={"results": [{"tool_call_id": "nope", "output": "x"}]})
        assert wrong.status_code == 409 and wrong.json()["type"].endswith("tool-call-not-pending")
        empty = await api.post(f"/api/chats/{chat}/tool-results", json={"results": []})
        assert empty.status_code == 422
        answered = await api.post(f"/api/chats/{chat}/tool-results",
                                  json={"results": [{"tool_call_id": "k1", "output": "blue"}]})
        assert answered.status_code == 202, answered.text
        assert answered.json()["result"]["status"] == "pending"
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the turn to continue")
    snap = (await api.get(f"/api/chats/{chat}")).json()
    assert [m["role"] for m in snap["messages"]] == ["user", "assistant", "tool", "assistant"]


async def test_malformed_tool_definitions_are_a_422_and_create_nothing(
    api: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    before = conn.execute("SELECT count(*) FROM chatd.chats").fetchone()
    bad = await api.post("/api/chats", json={"content": "x", "tools": [{"name": "", "input_schema": 3}]})
    assert bad.status_code == 422, bad.text
    assert conn.execute("SELECT count(*) FROM chatd.chats").fetchone() == before


async def test_messages_page_back_in_time_with_before(
    api: httpx.AsyncClient, conn: psycopg.Connection[Any]
) -> None:
    chat = (await api.post("/api/chats", json={"content": "first"})).json()["id"]
    conn.execute(
        "INSERT INTO chatd.messages (chat_id, role, content) "
        "SELECT %s, 'assistant', jsonb_build_array(jsonb_build_object('type', 'text', 'text', 'm' || i)) "
        "FROM generate_series(1, 30) AS i",
        (chat,),
    )
    seen: list[int] = []
    before = ""
    for _ in range(10):  # 31 messages, 12 a page: 3 pages
        page = await api.get(f"/api/chats/{chat}/messages", params={"before": before, "limit": 12})
        assert page.status_code == 200, page.text
        ids = [m["id"] for m in page.json()["messages"]]
        assert ids == sorted(ids), "oldest first within a page"
        seen = ids + seen
        if not page.json()["more"]:
            break
        before = str(page.json()["before"])
    everything = [r[0] for r in conn.execute(
        "SELECT id FROM chatd.messages WHERE chat_id = %s ORDER BY id", (chat,)).fetchall()]
    assert seen == everything and len(seen) == 31
    both = await api.get(f"/api/chats/{chat}/messages", params={"before": 5, "after": 1})
    assert both.status_code == 400
    word = await api.get(f"/api/chats/{chat}/messages", params={"before": "abc"})
    assert word.status_code == 400
