"""Roles as a deployment uses them (docs/security.md): login roles that are
members of chatd_worker / chatd_app connect for real, and a migrating role
that is neither superuser nor CREATEROLE works once it is a member of
chatd_owner, and is told exactly what a DBA must run when it is not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from repo_support import REPO_ROOT

from chatd import migrate
from chatd.testing import DatabaseServer, Factory

PASSWORD = "chatd-test-password"


def _login_dsn(pg: DatabaseServer, dsn: str, role: str) -> str:
    return psycopg.conninfo.make_conninfo(dsn, user=role, password=PASSWORD)


@pytest.fixture
def login_role(pg: DatabaseServer) -> Iterator[Any]:
    """Creates LOGIN roles (IN ROLE the given group role) and drops them after."""
    created: list[str] = []

    def make(member_of: str | None) -> str:
        name = f"chatd_test_login_{uuid.uuid4().hex[:10]}"
        stmt = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(PASSWORD)
        )
        if member_of:
            stmt += sql.SQL(" IN ROLE {}").format(sql.Identifier(member_of))
        with pg.admin() as conn:
            conn.execute(stmt)
        created.append(name)
        return name

    yield make
    with pg.admin() as conn:
        for name in created:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def test_worker_login_role_runs_a_turn_and_cannot_read_tables(
    pg: DatabaseServer, db: str, factory: Factory, login_role: Any
) -> None:
    owner = factory.user(factory.org())
    factory.model_config(is_default=True)
    chat = factory.chat(owner)
    worker = login_role("chatd_worker")
    with psycopg.connect(_login_dsn(pg, db, worker), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (worker,)
        claimed = conn.execute(
            "SELECT chat_id, lease FROM chatd.acquire_chats('w-login', 10)"
        ).fetchall()
        assert [row[0] for row in claimed] == [chat]
        lease = claimed[0][1]
        conn.execute("SELECT chatd.finish_turn(%s, %s, %s)", (chat, lease, '"done"'))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM chatd.messages")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT chatd.get_chat_snapshot(%s, %s)", (owner, chat))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT chatd.admin_set_user_limit(%s, 0)", (str(owner),))


def test_app_login_role_creates_and_reads_chats_and_cannot_claim_them(
    pg: DatabaseServer, db: str, factory: Factory, login_role: Any
) -> None:
    org = factory.org()
    user = factory.user(org)
    factory.model_config(is_default=True)
    app = login_role("chatd_app")
    with psycopg.connect(_login_dsn(pg, db, app), autocommit=True) as conn:
        row = conn.execute("SELECT chatd.create_chat(%s, %s, %s)", (user, org, '"hi"')).fetchone()
        assert row is not None
        snapshot = conn.execute("SELECT chatd.get_chat_snapshot(%s, %s)", (user, row[0])).fetchone()
        assert snapshot is not None and snapshot[0]["chat"]["status"] == "pending"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM chatd.acquire_chats('app', 1)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE chatd.chats SET title = 'x'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM chatd.spend_by_user")


def test_a_login_role_in_no_chatd_role_can_do_nothing(
    pg: DatabaseServer, db: str, login_role: Any
) -> None:
    nobody = login_role(None)
    with psycopg.connect(_login_dsn(pg, db, nobody), autocommit=True) as conn:
        for statement in (
            "SELECT chatd.janitor()",
            "SELECT * FROM chatd.list_chats(gen_random_uuid())",
            "SELECT count(*) FROM chatd.chats",
            "SELECT count(*) FROM chatd_meta.migrations",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)


def test_unprivileged_migrator_is_told_what_a_dba_must_run_then_migrates_as_member(
    pg: DatabaseServer, login_role: Any
) -> None:
    """Neither superuser nor CREATEROLE: refused with the exact GRANT; once a
    member of chatd_owner it migrates, and every object ends up owned by
    chatd_owner (never by the migrator)."""
    migrator = login_role(None)
    name = f"chatd_secmig_{uuid.uuid4().hex[:10]}"
    dsn = pg.create_database(name)
    try:
        with pg.admin() as conn:
            conn.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(name), sql.Identifier(migrator)
                )
            )
        migrator_dsn = _login_dsn(pg, dsn, migrator)
        with pytest.raises(migrate.MigrationFailed) as failure:
            migrate.apply(migrator_dsn, log=lambda _m: None)
        message = str(failure.value)
        assert "90_roles.sql" in message
        assert "must be a member of chatd_owner" in message
        with psycopg.connect(migrator_dsn) as conn:
            # the repeatable files ran in one transaction: nothing of them stayed
            assert conn.execute("SELECT to_regprocedure('chatd.janitor()')").fetchone() == (None,)

        with pg.admin() as conn:
            conn.execute(sql.SQL("GRANT chatd_owner TO {}").format(sql.Identifier(migrator)))
        migrate.apply(migrator_dsn, log=lambda _m: None)
        with psycopg.connect(migrator_dsn) as conn:
            not_owned = conn.execute(
                """
                SELECT c.relname::text FROM pg_class AS c
                WHERE c.relnamespace = 'chatd'::regnamespace AND c.relowner <> 'chatd_owner'::regrole
                UNION ALL
                SELECT p.proname::text FROM pg_proc AS p
                WHERE p.pronamespace = 'chatd'::regnamespace AND p.proowner <> 'chatd_owner'::regrole
                """
            ).fetchall()
            assert not_owned == []
        # and down/up works for a member too
        migrate.down(migrator_dsn, 0, log=lambda _m: None)
        migrate.apply(migrator_dsn, log=lambda _m: None)
    finally:
        pg.drop_database(name)
        with pg.admin() as conn:
            conn.execute(sql.SQL("REVOKE chatd_owner FROM {}").format(sql.Identifier(migrator)))


def test_docs_name_every_function_a_chatd_role_may_call(conn: psycopg.Connection[Any]) -> None:
    docs = (REPO_ROOT / "docs" / "security.md").read_text()
    granted = conn.execute(
        """
        SELECT DISTINCT p.proname::text FROM pg_proc AS p
        WHERE p.pronamespace = 'chatd'::regnamespace
            AND (has_function_privilege('chatd_worker', p.oid, 'EXECUTE')
                OR has_function_privilege('chatd_app', p.oid, 'EXECUTE')
                OR has_function_privilege('chatd_reporting', p.oid, 'EXECUTE'))
        """
    ).fetchall()
    assert granted
    missing = [name for (name,) in granted if f"`{name}`" not in docs]
    assert missing == [], f"docs/security.md does not name: {missing}"


def test_a_worker_id_belongs_to_the_login_that_registered_it(
    pg: DatabaseServer, db: str, factory: Factory, login_role: Any
) -> None:
    owner = factory.user(factory.org())
    factory.model_config(is_default=True)
    chat = factory.chat(owner)
    first, second = login_role("chatd_worker"), login_role("chatd_worker")
    with psycopg.connect(_login_dsn(pg, db, first), autocommit=True) as mine, \
            psycopg.connect(_login_dsn(pg, db, second), autocommit=True) as other:
        lease = mine.execute("SELECT lease FROM chatd.acquire_chats('w-bound', 1)").fetchone()[0]
        for statement, args in [
            ("SELECT * FROM chatd.heartbeat('w-bound', %s, %s)", ([chat], [lease])),
            ("SELECT chatd.release_chats('w-bound')", ()),
            ("SELECT chatd.release_chats('w-bound', %s)", ([chat],)),
            ("SELECT * FROM chatd.acquire_chats('w-bound', 1)", ()),
        ]:
            with pytest.raises(psycopg.Error) as refused:
                other.execute(statement, args)
            assert refused.value.sqlstate == "CD002", statement
        assert mine.execute(
            "SELECT * FROM chatd.heartbeat('w-bound', %s, %s)", ([chat], [lease])
        ).fetchall() == [], "the owning login still runs its chat"
        assert other.execute("SELECT count(*) FROM chatd.acquire_chats('w-other', 1)").fetchone() == (0,)
        assert mine.execute("SELECT chatd.release_chats('w-bound')").fetchone() == (1,)
        # released and deregistered: the id is free again
        assert other.execute("SELECT count(*) FROM chatd.acquire_chats('w-bound', 1)").fetchone() == (1,)
