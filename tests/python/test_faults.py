"""Faults with real processes: chats survive a killed worker, a restarted
database, a stalled database and a storm of LLM failures."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Jsonb
from repo_support import fixture_files
from worker_support import (
    chat_row,
    messages,
    running_worker,
    status_is,
    text_of,
    wait_until,
    worker_config,
)

from chatd import migrate
from chatd.client import Client, MessageEvent, StatusEvent, Subscription
from chatd.llm import Finished, stream_turn
from chatd.localpg import LocalCluster
from chatd.testing import TEST_CLUSTER_SETTINGS, Factory, as_role, ensure_login_roles
from chatd.testing.fakellm import FakeLLM, Text
from chatd.testing.harness import TEST_LOGIN_ROLES, TEST_ROLE_PASSWORD
from chatd.worker import Worker


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def compat_model(factory: Factory, fake: FakeLLM) -> UUID:
    return factory.model_config(provider=factory.provider(kind="openai-compat", base_url=fake.openai_base_url))


async def _has_parts(dsn: str, chat: UUID) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        row = await (await conn.execute(
            "SELECT count(*) FROM chatd.stream_parts WHERE chat_id = %s", (chat,)
        )).fetchone()
    return bool(row and row[0])


async def test_a_sigkilled_worker_s_turn_is_completed_once_by_another_worker(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    conn.execute("UPDATE chatd.settings SET heartbeat_interval = '200 ms', stale_after = '1 second'")
    org = factory.org()
    owner = factory.user(org=org)
    fake.script(Text(" ".join(["doomed"] * 200), chunks=200, delay=0.05), Text("the completed answer"))
    chat = factory.chat(owner, org=org, model=compat_model(factory, fake))
    doomed = subprocess.Popen(
        [sys.executable, "-m", "chatd", "worker", "--database-url", as_role(db, "worker"), "--worker-id", "doomed"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await wait_until(lambda: _has_parts(db, chat), what="the doomed worker to stream")
        doomed.send_signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.wait, 30)
    finally:
        if doomed.poll() is None:
            doomed.kill()
    async with running_worker(worker_config(db, worker_id="rescuer", recover_interval=0.2)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the rescuer to finish the turn")
    [assistant] = await messages(db, chat, "assistant")
    assert text_of(assistant["content"]) == "the completed answer"
    assert len(fake.requests) == 2, "the killed turn, then the recovered one: nothing else ran"


@pytest.fixture
def private_cluster() -> Iterator[tuple[LocalCluster, str]]:
    """A cluster of this test's own, which it may restart."""
    cluster = LocalCluster.create(settings=TEST_CLUSTER_SETTINGS).start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE chatd_restart")
        dsn = cluster.dsn("chatd_restart")
        migrate.apply(dsn, log=lambda _m: None)
        ensure_login_roles(cluster.dsn())
        with psycopg.connect(dsn, autocommit=True) as conn:
            for path in fixture_files():
                conn.execute(path.read_text().encode())
        yield cluster, dsn
    finally:
        cluster.stop()


async def test_every_chat_completes_once_after_postgres_restarts_mid_stream(
    private_cluster: tuple[LocalCluster, str], fake: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    cluster, dsn = private_cluster
    caplog.set_level(logging.WARNING)
    with psycopg.connect(dsn, autocommit=True) as conn:
        factory = Factory(conn)
        org = factory.org()
        owner = factory.user(org=org)
        model = compat_model(factory, fake)
        fake.script(*[Text(" ".join([f"part{i}"] * 60), chunks=60, delay=0.05) for i in range(8)])
        chats = [factory.chat(owner, org=org, model=model, text=f"question {i}") for i in range(8)]
    async with running_worker(worker_config(dsn, db_timeout=2.0)) as worker:
        for chat in chats:
            await wait_until(lambda c=chat: _has_parts(dsn, c), what="every chat to stream")
        await asyncio.to_thread(cluster.restart)
        for chat in chats:
            await wait_until(lambda c=chat: status_is(dsn, c, "waiting"), timeout=90,
                             what="every chat to complete after the restart")
        assert worker.metrics.counters["chatd_worker_listener_reconnects_total"] >= 1
    for chat in chats:
        assert len(await messages(dsn, chat, "assistant")) == 1, "one answer per chat: none lost, none twice"
    assert len(fake.requests) == 8, "no turn had to be re-run"
    # chatd's own lines (`chatd worker` also silences psycopg.pool's per-attempt ones)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("chatd")]
    assert len(warnings) <= 3, f"one line per outage (calls, listener), not one per call: {warnings}"


async def test_a_stalled_database_makes_control_path_calls_time_out_not_hang(
    db: str, factory: Factory
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    chat = factory.chat(owner, org=org)
    async with await Client.connect(as_role(db, "app"), timeout=0.5) as client:
        with psycopg.connect(db) as locker:
            locker.execute("SELECT 1 FROM chatd.chats WHERE id = %s FOR UPDATE", (chat,))
            with pytest.raises(TimeoutError):
                await client.interrupt(owner, chat)
            with pytest.raises(TimeoutError):
                await client.send_message(owner, chat, "blocked by the lock")
            locker.rollback()
        # the lock is gone: the same calls work, and the timed-out ones changed nothing
        await client.interrupt(owner, chat)
        assert (await client.snapshot(owner, chat)).chat.status == "waiting"
    assert [m["role"] for m in await messages(db, chat)] == ["user"]


async def test_a_worker_whose_writes_stall_times_out_and_completes_once_the_lock_is_gone(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    fake.script(Text("written after the stall", chunks=20, delay=0.05))
    chat = factory.chat(owner, org=org, model=compat_model(factory, fake))
    async with running_worker(worker_config(db, db_timeout=0.3, heartbeat_interval=0.2)) as worker:
        await wait_until(lambda: _has_parts(db, chat), what="the turn to stream")
        with psycopg.connect(db) as locker:
            locker.execute("SELECT 1 FROM chatd.chats WHERE id = %s FOR UPDATE", (chat,))
            # heartbeats and part flushes need the row too: they must give up, not hang
            await wait_until(lambda: _timed_out(worker), what="a worker call to time out")
            locker.rollback()
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the turn to complete after the stall")
    [assistant] = await messages(db, chat, "assistant")
    assert text_of(assistant["content"]) == "written after the stall"


async def _timed_out(worker: Any) -> bool:
    return bool(worker.metrics.counters["chatd_worker_db_timeouts_total"] > 0)


STORM = [
    # directive, expected status, expected last_error kind (None: cleared by success)
    ("429 retry-after=0.05 times=2", "waiting", None),
    ("529 error=overloaded_error times=1", "waiting", None),
    ("500 times=99", "error", "generic"),
    ("truncate times=1", "waiting", None),
    ("hang=1.5 times=1", "waiting", None),
    ("401", "error", "auth"),
    ("400 error=context_length_exceeded", "error", "context_length"),
    ("chunks=4", "waiting", None),
]


async def test_a_storm_of_llm_faults_over_200_chats_leaves_nothing_running(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    conn.execute(
        "UPDATE chatd.settings SET backoff_base = '20 ms', backoff_cap = '100 ms', "
        "startup_timeout = '500 ms', max_attempts = 4"
    )
    org = factory.org()
    owner = factory.user(org=org)
    model = compat_model(factory, fake)
    chats: list[tuple[UUID, str, str | None]] = []
    for i in range(200):
        directive, status, kind = STORM[i % len(STORM)]
        row = conn.execute(
            "SELECT chatd.create_chat(%s, %s, %s, %s)",
            (owner, org, Jsonb([{"type": "text", "text": f"chat {i} [[fake:{directive}]]"}]), model),
        ).fetchone()
        assert row is not None
        chats.append((row[0], status, kind))

    async def settled() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM chatd.chats WHERE status IN ('waiting', 'error')"
        ).fetchone()
        return bool(row and row[0] == len(chats))

    async with running_worker(worker_config(db, max_chats=40, pool_size=12, recover_interval=1.0)):
        await wait_until(settled, timeout=150, what="every chat to complete or fail for good")
    for chat, status, kind in chats:
        row = await chat_row(db, chat)
        assert row["status"] == status, (chat, row)
        if kind is None:
            assert len(await messages(db, chat, "assistant")) == 1
        else:
            assert row["last_error"]["kind"] == kind
            assert await messages(db, chat, "assistant") == []
    stuck = conn.execute("SELECT count(*) FROM chatd.chats WHERE status IN ('running', 'pending')").fetchone()
    assert stuck == (0,)


def _with_statement_timeout(dsn: str, ms: int) -> str:
    return psycopg.conninfo.make_conninfo(dsn, options=f"-c statement_timeout={ms}")


async def _retries(worker: Any, at_least: int) -> bool:
    return bool(worker.metrics.counters["chatd_worker_write_retries_total"] >= at_least)


async def test_a_turn_whose_result_cannot_be_written_keeps_retrying_and_completes_once_when_it_can(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    fake.script(Text("written after the lock", chunks=10, delay=0.05))
    chat = factory.chat(owner, org=org, model=compat_model(factory, fake))
    config = worker_config(
        db, database_url=_with_statement_timeout(as_role(db, "worker"), 300), heartbeat_interval=0.2
    )
    async with running_worker(config) as worker:
        await wait_until(lambda: _has_parts(db, chat), what="the turn to stream")
        with psycopg.connect(db) as locker:
            locker.execute("SELECT 1 FROM chatd.chats WHERE id = %s FOR UPDATE", (chat,))
            # more failed writes than the old four attempts: the worker keeps trying
            await wait_until(lambda: _retries(worker, 5), what="five failed attempts to write the result")
            assert chat in worker.turns, "the turn is still the worker's: its heartbeat reports the chat"
            locker.rollback()
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the result to be written")
    [assistant] = await messages(db, chat, "assistant")
    assert text_of(assistant["content"]) == "written after the lock"
    assert len(fake.requests) == 1, "the turn was never re-run"


async def test_a_turn_whose_result_cannot_be_written_until_shutdown_is_released_not_left_running(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    fake.script(Text("never written", chunks=10, delay=0.05))
    chat = factory.chat(owner, org=org, model=compat_model(factory, fake))
    config = worker_config(
        db, database_url=_with_statement_timeout(as_role(db, "worker"), 300), shutdown_grace=0.5
    )
    worker = Worker(config)
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: _has_parts(db, chat), what="the turn to stream")
        lease = (await chat_row(db, chat))["lease"]
        with psycopg.connect(db) as locker:
            locker.execute("SELECT 1 FROM chatd.chats WHERE id = %s FOR UPDATE", (chat,))
            await wait_until(lambda: _retries(worker, 2), what="the result's writes to fail")
            worker.stop()

            async def turn_cancelled() -> bool:
                return chat not in worker.turns

            await wait_until(turn_cancelled, what="the grace to end and the turn to be cancelled")
            locker.rollback()  # now release_chats can take the row
        await asyncio.wait_for(task, timeout=30)
    finally:
        worker.stop()
        if not task.done():
            task.cancel()
    row = await chat_row(db, chat)
    assert row["status"] == "pending", "released for another worker, not left running"
    assert row["lease"] == lease + 1 and row["worker_id"] is None
    assert await messages(db, chat, "assistant") == []


async def test_a_subscriber_whose_re_read_fails_at_the_final_message_still_gets_it(
    db: str, conn: psycopg.Connection[Any], factory: Factory
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    chat = factory.chat(owner, org=org, text="question")
    async with await Client.connect(as_role(db, "app"), timeout=0.5) as client:
        async with client.subscribe(owner, chat) as sub:
            async def until_status(status: str) -> list[Any]:
                events: list[Any] = []
                async with asyncio.timeout(30):
                    async for event in sub:
                        events.append(event)
                        if isinstance(event, StatusEvent) and event.status == status:
                            return events
                raise AssertionError(f"subscription ended early: {events}")

            await until_status("pending")
            [(lease,)] = conn.execute("SELECT lease FROM chatd.acquire_chats('w1', 1)").fetchall()
            await until_status("running")
            collector = asyncio.create_task(until_status("waiting"))
            with psycopg.connect(db) as finisher, psycopg.connect(db) as locker:
                finisher.execute(
                    "SELECT chatd.finish_turn(%s, %s, %s, '{}')",
                    (chat, lease, Jsonb([{"type": "text", "text": "the final answer"}])),
                )
                # queued behind the finish: granted the moment it commits, so
                # every re-read its notification triggers waits and times out
                locking = asyncio.create_task(asyncio.to_thread(
                    locker.execute, "LOCK TABLE chatd.chats IN ACCESS EXCLUSIVE MODE"
                ))
                locker_pid = locker.info.backend_pid

                async def lock_queued() -> bool:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted", (locker_pid,)
                    ).fetchone()
                    return bool(row and row[0])

                await wait_until(lock_queued, what="the table lock to queue behind the finish")
                finisher.commit()  # the final notification
                await locking

                async def failed_twice() -> bool:
                    return sub.refresh_failures >= 2

                await wait_until(failed_twice, what="the re-reads to fail")
                locker.rollback()  # no notification follows: only the retry timer can catch up
            events = await collector
    finals = [e.message.text for e in events if isinstance(e, MessageEvent)]
    assert finals == ["the final answer"]


async def test_the_janitor_runs_on_its_own_interval_not_the_recovery_interval(db: str) -> None:
    async with running_worker(worker_config(db, recover_interval=60.0, janitor_interval=0.1)) as worker:
        async def janitor_ran_thrice() -> bool:
            return bool(worker.metrics.counters["chatd_worker_janitor_runs_total"] >= 3)

        await wait_until(janitor_ran_thrice, timeout=10, what="three janitor runs within one recovery interval")


async def test_normal_finishes_log_no_cancellation_lines(
    db: str, factory: Factory, fake: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    model = compat_model(factory, fake)
    fake.script(*[Text(f"answer {i}", chunks=2) for i in range(30)])
    caplog.set_level(logging.INFO, logger="chatd")
    async with running_worker(worker_config(db, heartbeat_interval=0.05, max_chats=30)):
        chats = [factory.chat(owner, org=org, model=model, text=f"q{i}") for i in range(30)]
        for chat in chats:
            await wait_until(lambda c=chat: status_is(db, c, "waiting"), what="every chat to finish")
    noisy = [r.getMessage() for r in caplog.records if "cancel" in r.getMessage()]
    assert noisy == [], "a turn that finished normally is not reported as cancelled"


@pytest.fixture
def pgbouncer(db: str) -> Iterator[str]:
    """A real PgBouncer (pool_mode = transaction, 3 server connections per
    user) in front of this test's database; yields its DSN. Fails loudly when
    the binary is missing (`make setup` installs Debian's pgbouncer)."""
    binary = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if binary is None:
        pytest.fail("pgbouncer is not installed: run `make setup` (Debian package pgbouncer)")
    server = psycopg.conninfo.conninfo_to_dict(db)
    port = _free_port()
    users = [str(server.get("user") or "postgres"), *TEST_LOGIN_ROLES.values()]
    with tempfile.TemporaryDirectory(prefix="chatd-pgbouncer-") as tmp:
        home = Path(tmp)
        os.chmod(home, 0o755)  # readable by the postgres user pgbouncer runs as under root
        (home / "users.txt").write_text("".join(f'"{u}" "{TEST_ROLE_PASSWORD}"\n' for u in users))
        (home / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server.get('host', '127.0.0.1')} port={server['port']}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {home / 'users.txt'}\n"
            "pool_mode = transaction\ndefault_pool_size = 3\nmax_client_conn = 500\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        command = [binary, str(home / "pgbouncer.ini")]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            command[1:1] = ["-u", "postgres"]
        with open(home / "pgbouncer.log", "wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
        dsn = psycopg.conninfo.make_conninfo(db, host="127.0.0.1", port=port)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    psycopg.connect(dsn, connect_timeout=2).close()
                    break
                except psycopg.OperationalError as exc:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log_text = (home / "pgbouncer.log").read_text()
                        raise AssertionError(f"pgbouncer did not start: {log_text}") from exc
                    time.sleep(0.05)
            yield dsn
        finally:
            process.terminate()
            process.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _final_text(sub: Subscription, timeout: float) -> str:
    """The text of the first assistant message the subscription emits."""
    async with asyncio.timeout(timeout):
        async for event in sub:
            if isinstance(event, MessageEvent) and event.message.role == "assistant":
                return event.message.text
    raise AssertionError("subscription ended early")


async def _final_message(client: Client, owner: UUID, chat: UUID, timeout: float) -> str:
    """The text of the first assistant message a subscription to chat emits."""
    async with client.subscribe(owner, chat) as sub:
        return await _final_text(sub, timeout)


async def test_behind_pgbouncer_in_transaction_mode_every_chat_is_answered_and_seen_without_prepared_statements(
    pgbouncer: str, factory: Factory, fake: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    org = factory.org()
    owner = factory.user(org=org)
    model = compat_model(factory, fake)
    count = 30
    fake.script(*[Text(" ".join([f"answer{i}"] * 12), chunks=6, delay=0.01) for i in range(count)])
    chats = [factory.chat(owner, org=org, model=model, text=f"question {i}") for i in range(count)]

    async with await Client.connect(as_role(pgbouncer, "app"), poll_interval=0.2, max_size=4) as client:
        seen = [asyncio.create_task(_final_message(client, owner, chat, 90)) for chat in chats]
        config = worker_config(pgbouncer, poll_only=True, max_chats=10, pool_size=4, db_timeout=10.0)
        async with running_worker(config):
            texts = await asyncio.gather(*seen)
            for chat in chats:
                await wait_until(lambda c=chat: status_is(pgbouncer, c, "waiting"), what="every chat to finish")
    assert sorted(texts) == sorted(" ".join([f"answer{i}"] * 12) for i in range(count)), \
        "the client saw every final message"
    for chat in chats:
        assert len(await messages(pgbouncer, chat, "assistant")) == 1, "every chat answered once"
    assert len(fake.requests) == count
    errors = [r.getMessage() for r in caplog.records if "prepared statement" in r.getMessage()]
    assert errors == [], errors
    assert not [r for r in caplog.records if "batched finish failed" in r.getMessage()]


async def test_a_running_chat_its_live_idle_worker_does_not_run_is_released_and_answered(
    db: str, conn: psycopg.Connection[Any], factory: Factory, fake: FakeLLM
) -> None:
    conn.execute("UPDATE chatd.settings SET heartbeat_interval = '200 ms', stale_after = '1 second'")
    org = factory.org()
    owner = factory.user(org=org)
    fake.script(Text("answered after all"))
    chat = factory.chat(owner, org=org, model=compat_model(factory, fake))
    # the worker's earlier life claimed the chat and lost its turn without a trace
    with psycopg.connect(as_role(db, "worker"), autocommit=True) as worker_conn:
        worker_conn.execute("SELECT chatd.acquire_chats('test-worker', 1)")
    conn.execute("UPDATE chatd.chats SET heartbeat_at = now() - interval '1 minute' WHERE id = %s", (chat,))
    async with running_worker(worker_config(db, heartbeat_interval=0.2, recover_interval=60.0)):
        await wait_until(lambda: status_is(db, chat, "waiting"), what="the orphan to be released and answered")
    [assistant] = await messages(db, chat, "assistant")
    assert text_of(assistant["content"]) == "answered after all"


async def test_fifty_subscribers_see_every_final_message_across_a_postgres_restart(
    private_cluster: tuple[LocalCluster, str], fake: FakeLLM
) -> None:
    cluster, dsn = private_cluster
    count = 50
    with psycopg.connect(dsn, autocommit=True) as conn:
        factory = Factory(conn)
        org = factory.org()
        owner = factory.user(org=org)
        model = compat_model(factory, fake)
        fake.script(*[Text(" ".join([f"final{i}"] * 20), chunks=20, delay=0.05) for i in range(count)])
        chats = [factory.chat(owner, org=org, model=model, text=f"question {i}") for i in range(count)]

    async with await Client.connect(as_role(dsn, "app"), timeout=1.0, max_size=8) as client:
        subs = [client.subscribe(owner, chat) for chat in chats]
        gate = asyncio.Semaphore(4)

        async def first_snapshot(sub: Subscription) -> None:
            # before any fault, a few at a time: 50 at once could wait more than
            # the client's 1 s timeout for the 8-connection pool on a loaded machine
            async with gate:
                await anext(sub)

        async def final_then_close(sub: Subscription) -> str:
            async with sub:  # each leaves once answered: channel changes while finals arrive
                return await _final_text(sub, 40)

        try:
            await asyncio.gather(*(first_snapshot(sub) for sub in subs))
            seen = [asyncio.create_task(final_then_close(sub)) for sub in subs]
            async with running_worker(worker_config(dsn, max_chats=count, pool_size=8, db_timeout=2.0)):
                for chat in chats:
                    await wait_until(lambda c=chat: _has_parts(dsn, c), what="every chat to stream")
                await asyncio.to_thread(cluster.restart)  # the answers land around the restart
                texts = await asyncio.gather(*seen)
        finally:
            for sub in subs:
                await sub.aclose()
    assert sorted(texts) == sorted(" ".join([f"final{i}"] * 20) for i in range(count)), "no final message missed"
    for chat in chats:
        assert len(await messages(dsn, chat, "assistant")) == 1


async def test_publish_parts_waiting_on_the_database_never_stalls_the_llm_stream(
    db: str, factory: Factory, fake: FakeLLM
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    answer = " ".join(f"word{i}" for i in range(20))
    fake.script(Text(answer, chunks=20, delay=0.02))
    chat = factory.chat(owner, org=org, model=compat_model(factory, fake))
    pulled: list[tuple[float, Any]] = []  # when the worker took each event of the LLM stream

    async def timed_stream(*args: Any, **kwargs: Any) -> Any:
        async for event in stream_turn(*args, **kwargs):
            pulled.append((time.monotonic(), event))
            yield event

    async def stream_consumed() -> bool:
        return any(isinstance(event, Finished) for _, event in pulled)

    async with await psycopg.AsyncConnection.connect(db) as blocker:
        # every publish_parts now waits for the lock until its db_timeout
        await blocker.execute("LOCK TABLE chatd.stream_parts IN EXCLUSIVE MODE")
        async with running_worker(worker_config(db, db_timeout=3.0), stream=timed_stream):
            await wait_until(stream_consumed, timeout=15, what="the worker to consume the whole LLM stream")
            took = pulled[-1][0] - pulled[0][0]
            await blocker.rollback()
            await wait_until(lambda: status_is(db, chat, "waiting"), what="the turn to finish")
    assert took < 1.5, f"the stream waited for publish_parts ({took:.1f}s for 20 chunks 20 ms apart)"
    [assistant] = await messages(db, chat, "assistant")
    assert text_of(assistant["content"]) == answer


async def test_a_shutdown_returns_within_the_grace_even_when_the_release_cannot_be_written(
    db: str, factory: Factory, fake: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    org = factory.org()
    owner = factory.user(org=org)
    fake.script(Text(" ".join(["long"] * 300), chunks=300, delay=0.05))
    chat = factory.chat(owner, org=org, model=compat_model(factory, fake))
    grace = 2.0
    worker = Worker(worker_config(db, shutdown_grace=grace, db_timeout=4.0))
    task = asyncio.create_task(worker.run())
    try:
        await wait_until(lambda: _has_parts(db, chat), what="the turn to stream")
        async with await psycopg.AsyncConnection.connect(db) as blocker:
            # the chat row is locked: publish_parts and release_chats wait for it
            await blocker.execute("SELECT 1 FROM chatd.chats WHERE id = %s FOR UPDATE", (chat,))
            started = time.monotonic()
            worker.stop()
            await asyncio.wait_for(asyncio.shield(task), timeout=30)
            took = time.monotonic() - started
    finally:
        worker.stop()
        await asyncio.wait_for(task, timeout=30)
    assert took < grace + 0.5, f"shutdown took {took:.1f}s with a {grace:.0f}s grace"
    assert any("could not release 1 turn(s)" in r.getMessage() for r in caplog.records)
