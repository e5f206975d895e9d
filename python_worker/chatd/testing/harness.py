"""Test harness: a real PostgreSQL for tests, a migrated template, factories.

Where the database comes from, in order:

1. ``CHATD_TEST_DATABASE_URL``: an existing server (the role needs CREATEDB;
   pgTAP and plpgsql_check must be installable there);
2. a testcontainers PostgreSQL when a Docker engine answers and has the
   image (``CHATD_TEST_IMAGE``, default ``chatd-test-postgres:15``, carrying
   pgTAP and plpgsql_check; see chatd.testing.containers); otherwise, or when
   the container fails, the local cluster, said on stderr.
   ``CHATD_TEST_DOCKER=always`` makes that a HarnessError, ``never`` skips it;
3. a throwaway local cluster from the PostgreSQL binaries on this machine
   (see chatd.localpg), removed at the end;
4. otherwise a hard failure saying what to install. Never a silent skip.

One template database is migrated per session (migrations, repeatable sql/,
the pgTAP and plpgsql_check extensions, and the SQL fixture files the caller
passes, e.g. chatd's own tests/sql/_*.sql); each test gets a fresh database cloned from it with
``CREATE DATABASE ... TEMPLATE``, which takes a few tens of milliseconds.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from chatd import migrate
from chatd.localpg import LocalCluster, PostgresNotFound
from chatd.testing.containers import (
    ContainerError,
    default_image,
    engine_answers,
    pg_major,
    start_postgres,
)

__all__ = [
    "PGTAP_ASSERTIONS",
    "TEST_CLUSTER_SETTINGS",
    "DatabaseServer",
    "Factory",
    "HarnessError",
    "as_role",
    "build_template",
    "ensure_login_roles",
    "fresh_database",
    "start_server",
]

# Settings for the throwaway test cluster: durability off, since a crash of
# a test cluster loses nothing of value; enough connections for race tests.
TEST_CLUSTER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}


# pgTAP assertions passed per file, filled by tests/test_pgtap.py and printed
# in the session summary.
PGTAP_ASSERTIONS: dict[str, int] = {}


class HarnessError(RuntimeError):
    """No usable test database; the message says what to install or set."""


@dataclass
class DatabaseServer:
    """A PostgreSQL server the tests may create databases on."""

    admin_dsn: str
    source: str  # env | testcontainers | local
    cluster: LocalCluster | None = None
    note: str = ""  # the image (testcontainers), why no container (local)
    _stop: list[Any] = field(default_factory=list)

    def dsn(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(self.admin_dsn, dbname=dbname)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        with self.admin() as conn:
            if template:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template)
                    )
                )
            else:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def stop(self) -> None:
        for stop in reversed(self._stop):
            stop()
        self._stop.clear()


def _start_container(mode: str) -> DatabaseServer | str:
    """The testcontainers server, or why not: the local cluster follows in
    ``auto`` mode (the reason said on stderr and in the session summary);
    HarnessError in ``always`` mode."""
    image = default_image()
    client = engine_answers()
    if client is None:
        if mode == "always":
            raise HarnessError(
                "CHATD_TEST_DOCKER=always but no Docker engine answers "
                f"(DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}; scripts/container-engine.sh start)"
            )
        return ""  # no engine: the usual case, nothing to say
    try:
        dsn, remove = start_postgres(client, image, TEST_CLUSTER_SETTINGS)
    except ContainerError as exc:
        if mode == "always":
            raise HarnessError(str(exc)) from exc
        print(f"chatd test harness: {exc}; using a local cluster instead", file=sys.stderr)
        return f"(no container: {exc})"
    finally:
        client.close()
    server = DatabaseServer(dsn, "testcontainers", note=image)
    server._stop.append(remove)
    return server


def start_server() -> DatabaseServer:
    """Find or start a PostgreSQL server for the test session (see module doc)."""
    env_dsn = os.environ.get("CHATD_TEST_DATABASE_URL")
    if env_dsn:
        try:
            with psycopg.connect(env_dsn, connect_timeout=10):
                pass
        except psycopg.Error as exc:
            raise HarnessError(
                f"CHATD_TEST_DATABASE_URL is set but the database is unreachable: {exc}"
            ) from exc
        return DatabaseServer(env_dsn, "env")
    mode = os.environ.get("CHATD_TEST_DOCKER", "auto")
    if mode not in ("auto", "always", "never"):
        raise HarnessError(f"CHATD_TEST_DOCKER must be auto, always or never, not {mode!r}")
    why_not = ""
    if mode != "never":
        container = _start_container(mode)
        if isinstance(container, DatabaseServer):
            return container
        why_not = container
    try:
        cluster = LocalCluster.create(settings=TEST_CLUSTER_SETTINGS).start()
    except PostgresNotFound as exc:
        raise HarnessError(
            "no test database: CHATD_TEST_DATABASE_URL is unset, no Docker engine gave a container, "
            f"and {exc}"
        ) from exc
    server = DatabaseServer(cluster.dsn(), "local", cluster, note=why_not)
    server._stop.append(cluster.stop)
    return server


def build_template(
    server: DatabaseServer, name: str | None = None, *, fixtures: Sequence[Path] = ()
) -> str:
    """Create and migrate the template database, then run each SQL file of
    ``fixtures`` (e.g. factories) in it; returns its name. Nothing is read
    from a source checkout: the migrations come from chatd.migrate."""
    name = name or f"chatd_template_{uuid.uuid4().hex[:8]}"
    dsn = server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for extension in ("pgtap", "plpgsql_check"):
            try:
                conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
            except psycopg.Error as exc:
                major = (pg_major(server.note) if server.note else None) or 15
                where = (f"the image {server.note} lacks it (scripts/build-test-image.sh builds one that has it)"
                         if server.source == "testcontainers" else "`make setup` installs it as root")
                raise HarnessError(
                    f"the test database cannot load the {extension} extension ({exc}): "
                    f"postgresql-{major}-pgtap and postgresql-{major}-plpgsql-check are needed; {where}"
                ) from exc
    migrate.apply(dsn, log=lambda _message: None)
    ensure_login_roles(server.admin_dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in fixtures:
            with conn.transaction():
                conn.execute(path.read_text(encoding="utf-8").encode())
    return name


# Login roles the tests connect as, members of the NOLOGIN roles the
# migrator creates: workers and application servers never run as the owner.
TEST_LOGIN_ROLES = {"worker": "chatd_test_worker", "app": "chatd_test_app"}
TEST_ROLE_PASSWORD = "chatd-test"


def ensure_login_roles(admin_dsn: str) -> None:
    """Create the test login roles (cluster-wide, once)."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for kind, login in TEST_LOGIN_ROLES.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone()
            if exists:
                continue
            try:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                        sql.Identifier(login), sql.Literal(TEST_ROLE_PASSWORD),
                        sql.Identifier(f"chatd_{kind}"),
                    )
                )
            except psycopg.errors.DuplicateObject:
                pass  # another session created it meanwhile
            except psycopg.Error as exc:
                raise HarnessError(
                    f"cannot create the test login role {login} (needs CREATEROLE): {exc}"
                ) from exc


def as_role(dsn: str, kind: str) -> str:
    """The same database, connecting as the worker or app test login role."""
    return psycopg.conninfo.make_conninfo(dsn, user=TEST_LOGIN_ROLES[kind], password=TEST_ROLE_PASSWORD)


class Factory:
    """Python access to the SQL fixture factories (tests/sql/_fixtures.sql).

    Every method takes keyword overrides named like the SQL parameters
    without their ``p_`` prefix and returns the new row's id.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def _call(self, function: str, **kwargs: Any) -> Any:
        # Every given keyword is passed, None as NULL (an unpriced model, say);
        # the SQL defaults cover the rest.
        args = list(kwargs.values())
        names = list(kwargs)
        query = sql.SQL("SELECT chatd_test.{}({})").format(
            sql.Identifier(function),
            sql.SQL(", ").join(
                sql.SQL("{} => %s").format(sql.Identifier(f"p_{n}")) for n in names
            ),
        )
        row = self.conn.execute(query, args).fetchone()
        assert row is not None
        return row[0]

    def org(self, **kw: Any) -> uuid.UUID:
        return self._call("org", **kw)  # type: ignore[no-any-return]

    def user(self, org: uuid.UUID | None = None, **kw: Any) -> uuid.UUID:
        return self._call("user", org=org, **kw)  # type: ignore[no-any-return]

    def member(self, org: uuid.UUID, user: uuid.UUID) -> None:
        self._call("member", org=org, user=user)

    def group(
        self, org: uuid.UUID, limit_micros: int | None = None,
        members: Sequence[uuid.UUID] = (), **kw: Any,
    ) -> uuid.UUID:
        return self._call(  # type: ignore[no-any-return]
            "grp", org=org, limit_micros=limit_micros, members=list(members), **kw
        )

    def workspace(self, org: uuid.UUID, **kw: Any) -> uuid.UUID:
        return self._call("workspace", org=org, **kw)  # type: ignore[no-any-return]

    def provider(self, **kw: Any) -> uuid.UUID:
        return self._call("provider", **kw)  # type: ignore[no-any-return]

    def model_config(self, **kw: Any) -> uuid.UUID:
        return self._call("model_config", **kw)  # type: ignore[no-any-return]

    def chat(self, owner: uuid.UUID, **kw: Any) -> uuid.UUID:
        return self._call("chat", owner=owner, **kw)  # type: ignore[no-any-return]

    def message(self, chat: uuid.UUID, **kw: Any) -> int:
        return self._call("message", chat=chat, **kw)  # type: ignore[no-any-return]


@contextmanager
def fresh_database(server: DatabaseServer, template: str) -> Iterator[str]:
    """A database cloned from the template, dropped afterwards; yields its DSN."""
    name = f"chatd_test_{uuid.uuid4().hex[:12]}"
    dsn = server.create_database(name, template)
    try:
        yield dsn
    finally:
        server.drop_database(name)
