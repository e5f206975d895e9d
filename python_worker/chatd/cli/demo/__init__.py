"""`chatd demo`: the whole system end to end, on nothing but this machine.

1. a database: $DATABASE_URL, else a throwaway local cluster;
2. `chatd migrate`;
3. an LLM: OpenAI or Anthropic when their API key is set (and --llm auto),
   else the scripted fake server (chatd.testing.fakellm) on 127.0.0.1;
4. a worker and a client in this process;
5. four chats at once: one streaming to the terminal, one with a queued
   second message, one interrupted mid-stream, one retried after a scripted
   429; then three agent chats (agent.py): one calling a tool of the example
   MCP server, one calling a client tool the demo answers, one spawning two
   sub-agents; then the final state of each;
6. unless --no-serve: `chatd serve` on 127.0.0.1 with the worker still
   running, and the URL of the web page (with a signed token) to open;
   Ctrl-C ends it;
7. everything it started is stopped and removed.

Imports: anything below the CLI, and chatd.testing (the fake LLM it runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql as pgsql

from chatd import migrate
from chatd.cli.demo.agent import (
    MCP_EXAMPLE,
    AgentChat,
    register_example_server,
    run_agent_chats,
    script_fake,
)
from chatd.cli.demo.page import serve_page
from chatd.client import (
    Client,
    ErrorEvent,
    MessageEvent,
    PartsEvent,
    QueueEvent,
    RetryEvent,
    StatusEvent,
)
from chatd.config import WorkerConfig
from chatd.localpg import LocalCluster, PostgresNotFound
from chatd.protocol import queries
from chatd.testing.fakellm import FakeLLM
from chatd.worker import Worker

STREAM_REPLY = (
    "chatd keeps every chat in PostgreSQL. A worker claims a runnable chat under a lease, "
    "streams the model's words as they come, and writes the answer in one transaction. "
    "If the worker dies, another one recovers the turn; if the model fails, SQL schedules the retry."
)


COUNTING = "_".join(str(n) for n in range(1, 501))


@dataclass
class Llm:
    kind: str  # openai | anthropic | openai-compat
    base_url: str | None
    api_key_env: str | None
    model: str
    scripted: bool
    fake: FakeLLM | None = None


@dataclass
class Scenario:
    name: str
    chat_id: UUID | None = None
    log: list[str] = field(default_factory=list)


def _prompt(llm: Llm, text: str, directive: str) -> str:
    """The scripted fake obeys `[[fake:...]]` directives; a real model gets plain text."""
    return f"{text} [[fake:{directive}]]" if llm.scripted else text


def _choose_llm(choice: str) -> Llm:
    if choice in ("auto", "openai") and os.environ.get("OPENAI_API_KEY"):
        return Llm("openai", None, "OPENAI_API_KEY",
                   os.environ.get("CHATD_DEMO_MODEL", "gpt-4o-mini"), False)
    if choice in ("auto", "anthropic") and os.environ.get("ANTHROPIC_API_KEY"):
        return Llm("anthropic", None, "ANTHROPIC_API_KEY",
                   os.environ.get("CHATD_DEMO_MODEL", "claude-3-5-haiku-latest"), False)
    if choice not in ("auto", "fake"):
        raise SystemExit(f"chatd demo: --llm {choice} needs its API key in the environment")
    fake = FakeLLM().start()
    return Llm("openai-compat", fake.openai_base_url, None, "chatd-fake", True, fake)


@asynccontextmanager
async def _database(say: Callable[[str], None]) -> AsyncIterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        say(f"database: DATABASE_URL ({migrate.redact(url)})")
        yield url
        return
    try:
        cluster = await asyncio.to_thread(LocalCluster.create().start)
    except PostgresNotFound as exc:
        raise SystemExit(f"chatd demo: {exc}") from exc
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE chatd_demo")
        say(f"database: throwaway PostgreSQL in {cluster.directory} (port {cluster.port})")
        yield cluster.dsn("chatd_demo")
    finally:
        await asyncio.to_thread(cluster.stop)
        say("removed the throwaway PostgreSQL")


def _seed(dsn: str, llm: Llm) -> tuple[UUID, UUID, UUID]:
    """The demo's organization, user, provider and default model, via the
    admin functions (idempotent: re-running the demo on one database works)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            queries.DEMO_IDENTITY
        ).fetchone()
        assert row is not None
        user_id, org_id = row
        conn.execute(
            queries.DEMO_UPSERT_PROVIDER,
            (f"demo-{llm.kind}", llm.kind, llm.base_url, llm.api_key_env),
        )
        model = conn.execute(
            queries.DEMO_UPSERT_MODEL,
            (f"demo-{llm.kind}", llm.model),
        ).fetchone()
        assert model is not None
        return user_id, org_id, model[0]


DEMO_ROLES = {"worker": "chatd_demo_worker", "app": "chatd_demo_app"}


def _login_roles(dsn: str, owns_database: bool) -> tuple[str, str]:
    """DSNs for the worker and the client: login roles in chatd_worker and
    chatd_app on the demo's own cluster (trust authentication), as a
    deployment would use. On a database given by DATABASE_URL the demo does
    not create roles: both connect as that URL's user."""
    if not owns_database:
        return dsn, dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        for kind, login in DEMO_ROLES.items():
            if not conn.execute(queries.ROLE_EXISTS, (login,)).fetchone():
                conn.execute(pgsql.SQL(queries.CREATE_LOGIN_ROLE).format(
                    login=pgsql.Identifier(login), role=pgsql.Identifier(f"chatd_{kind}")))
    worker = psycopg.conninfo.make_conninfo(dsn, user=DEMO_ROLES["worker"])
    app = psycopg.conninfo.make_conninfo(dsn, user=DEMO_ROLES["app"])
    return worker, app


def _user_of(dsn: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(dsn).get("user", "?"))


async def _follow(
    client: Client, user: UUID, scenario: Scenario, *, until: Callable[[Any], bool],
    on_event: Callable[[Any], Any] | None = None,
) -> None:
    """Subscribe to one chat and note its events until ``until`` says stop."""
    assert scenario.chat_id is not None
    async with client.subscribe(user, scenario.chat_id) as events:
        async for event in events:
            if on_event is not None:
                result = on_event(event)
                if asyncio.iscoroutine(result):
                    await result
            line = _describe(event)
            if line:
                scenario.log.append(line)
            if until(event):
                return


def _describe(event: Any) -> str | None:
    if isinstance(event, StatusEvent):
        return f"status {event.status}"
    if isinstance(event, MessageEvent):
        text = event.message.text
        return f"{event.message.role} message #{event.message.id}: {text[:60]!r}{'...' if len(text) > 60 else ''}"
    if isinstance(event, QueueEvent):
        return f"queue: {len(event.queue)} waiting"
    if isinstance(event, RetryEvent):
        kind = event.error.kind if event.error else "?"
        return f"retry: attempt {event.attempt} failed ({kind}), next in {event.delay_ms} ms"
    if isinstance(event, ErrorEvent):
        return f"error: {event.error.message if event.error else '?'}"
    return None


def _answered(count: int) -> Callable[[Any], bool]:
    seen = 0

    def check(event: Any) -> bool:
        nonlocal seen
        if isinstance(event, MessageEvent) and event.message.role == "assistant":
            seen += 1
        return seen >= count or isinstance(event, ErrorEvent)

    return check


async def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()

    def say(line: str) -> None:
        print(f"\033[2m[{time.monotonic() - started:5.1f}s] {line}\033[0m" if sys.stdout.isatty()
              else f"[{time.monotonic() - started:5.1f}s] {line}", flush=True)

    llm = _choose_llm(args.llm)
    try:
        async with _database(say) as dsn:
            owns_database = not os.environ.get("DATABASE_URL")
            await asyncio.to_thread(migrate.apply, dsn, log=lambda m: say(f"migrate: {m}"))
            user, org, _model = await asyncio.to_thread(_seed, dsn, llm)
            worker_dsn, app_dsn = await asyncio.to_thread(_login_roles, dsn, owns_database)
            say(f"worker connects as {_user_of(worker_dsn)}, the client as {_user_of(app_dsn)}")
            say(f"LLM: {'scripted fake server at ' + str(llm.base_url) if llm.scripted else llm.kind + ' ' + llm.model}")
            config = WorkerConfig(
                database_url=worker_dsn, worker_id="demo-worker", max_chats=8, poll_interval=0.5,
                heartbeat_interval=1.0, recover_interval=2.0, shutdown_grace=5.0,
            )
            worker = Worker(config)
            worker_task = asyncio.create_task(worker.run())
            try:
                await asyncio.wait_for(worker.ready.wait(), 30)
                say("worker started; four chats at once:")
                async with await Client.connect(app_dsn) as client:
                    chats: list[Any] = await _scenarios(client, user, org, llm, say)
                    chats += await _agent_chats(client, dsn, user, org, llm, say)
                    await _final_states(client, user, chats)
                if args.serve:
                    await serve_page(app_dsn, user, org, args.port, say)
            finally:
                worker.stop()
                await worker_task
                say("worker stopped")
    finally:
        if llm.fake is not None:
            llm.fake.close()
    say(f"done in {time.monotonic() - started:.1f}s")
    return 0


async def _scenarios(
    client: Client, user: UUID, org: UUID, llm: Llm, say: Callable[[str], None]
) -> list[Scenario]:
    # Long on purpose: the four scenarios run side by side and read as the
    # demo's script; each callback is a few lines and belongs to its scenario.
    stream, queued, interrupted, retried = (
        Scenario("stream"), Scenario("queue"), Scenario("interrupt"), Scenario("retry")
    )
    reply = STREAM_REPLY.replace(" ", "_")
    stream.chat_id = await client.create_chat(
        user, org, _prompt(llm, "How does chatd keep chats durable?", f"chunks=48 delay=0.04 reply={reply}"),
        title="streaming",
    )
    queued.chat_id = await client.create_chat(
        user, org, _prompt(llm, "First question: what is a lease?", "chunks=10 delay=0.05"), title="queue"
    )
    second = await client.send_message(user, queued.chat_id, "Second question, sent while the first runs.")
    queued.log.append(f"second message sent while busy: queued={second.get('queued')}")
    interrupted.chat_id = await client.create_chat(
        user, org, _prompt(llm, "Count slowly to five hundred.", f"chunks=250 delay=0.05 reply={COUNTING}"),
        title="interrupt",
    )
    retried.chat_id = await client.create_chat(
        user, org, _prompt(llm, "Answer after one rate limit.", "hang=1 429 retry-after=1 times=1"), title="retry"
    )

    printed_any = False

    def print_parts(event: Any) -> None:
        nonlocal printed_any
        if isinstance(event, PartsEvent) and event.text:
            if not printed_any:
                print("\n  ", end="")
                printed_any = True
            print(event.text, end="", flush=True)

    interrupt_sent = False
    streamed = 0

    async def interrupt_mid_stream(event: Any) -> None:
        nonlocal interrupt_sent, streamed
        if isinstance(event, PartsEvent) and not interrupt_sent:
            streamed += len(event.text)
            if streamed >= 40:
                interrupt_sent = True
                assert interrupted.chat_id is not None
                await client.interrupt(user, interrupted.chat_id)
                interrupted.log.append(f"interrupt sent after {streamed} streamed characters")

    def interrupted_done(event: Any) -> bool:
        return interrupt_sent and isinstance(event, MessageEvent) and event.message.role == "assistant"

    followers = asyncio.gather(
            _follow(client, user, stream, until=_answered(1), on_event=print_parts),
            _follow(client, user, queued, until=_answered(2)),
            _follow(client, user, interrupted, until=interrupted_done, on_event=interrupt_mid_stream),
            _follow(client, user, retried, until=_answered(1)),
    )
    try:
        await asyncio.wait_for(followers, timeout=45)
    except TimeoutError:
        for scenario in (stream, queued, interrupted, retried):
            print(f"\n'{scenario.name}' saw: {scenario.log}", file=sys.stderr)
        raise SystemExit("chatd demo: the chats did not finish within 45 s") from None
    print("\n", flush=True)
    for scenario in (queued, interrupted, retried):
        say(f"chat '{scenario.name}':")
        for line in scenario.log:
            print(f"     {line}")
    return [stream, queued, interrupted, retried]


async def _agent_chats(
    client: Client, owner_dsn: str, user: UUID, org: UUID, llm: Llm, say: Callable[[str], None]
) -> list[AgentChat]:
    with_mcp = await asyncio.to_thread(register_example_server, owner_dsn)
    if not with_mcp:
        say(f"no {MCP_EXAMPLE.name} in this installation: the MCP tool chat is left out")
    if llm.fake is not None:
        script_fake(llm.fake)
    say("agent chats: a tool of the example MCP server, a client tool this demo answers, "
        "and two sub-agents the model spawns:")
    return await run_agent_chats(client, user, org, with_mcp=with_mcp, say=say)


async def _final_states(client: Client, user: UUID, scenarios: list[Any]) -> None:
    print("\nfinal states:")
    print(f"  {'chat':<12} {'status':<8} {'messages':>8} {'tokens in/out':>14} {'cost ($)':>10}  last error")
    for scenario in scenarios:
        assert scenario.chat_id is not None
        snapshot = await client.snapshot(user, scenario.chat_id)
        visible = [m for m in snapshot.messages if m.role in ("user", "assistant")]
        assistant = [m for m in visible if m.role == "assistant"]
        tokens_in = sum(m.input_tokens or 0 for m in assistant)
        tokens_out = sum(m.output_tokens or 0 for m in assistant)
        cost = sum(m.total_cost_micros or 0 for m in assistant) / 1_000_000
        error = snapshot.chat.last_error.kind if snapshot.chat.last_error else "-"
        print(f"  {scenario.name:<12} {snapshot.chat.status:<8} {len(visible):>8} "
              f"{f'{tokens_in}/{tokens_out}':>14} {cost:>10.6f}  {error}")


EXAMPLE = "chatd demo --llm fake"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run chatd end to end: a throwaway PostgreSQL (unless DATABASE_URL is set), a worker, "
        "and a scripted LLM (unless OPENAI_API_KEY or ANTHROPIC_API_KEY is set)."
    )
    parser.add_argument("--llm", choices=["auto", "fake", "openai", "anthropic"], default="auto",
                        help="which LLM to use (default auto: a provider whose key is set, else the fake)")
    parser.add_argument("--no-serve", dest="serve", action="store_false",
                        help="terminal only: do not start chatd serve afterwards")
    parser.add_argument("--port", type=int, default=8080, help="port of chatd serve (default 8080)")


def run(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run(args))
    return 130
