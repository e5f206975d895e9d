"""Migrations a DBA can run on a busy database (issue 17): squawk in lint,
lock_timeout on every step, `chatd migrate --check` for deploy gates, and
`chatd migrate --print --out` exporting Flyway-style files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from repo_support import REPO_ROOT

from chatd import migrate
from chatd.cli.common import Exit
from chatd.localpg import find_pg_bin
from chatd.migrate.export import REPEATABLE_FILE
from chatd.testing import DatabaseServer

BIG_TABLES = ["chats", "messages", "stream_parts", "queued_messages"]
SQUAWK = REPO_ROOT / ".venv" / "bin" / "squawk"


@pytest.fixture
def empty_db(pg: DatabaseServer) -> Iterator[str]:
    name = f"chatd_empty_{uuid.uuid4().hex[:10]}"
    dsn = pg.create_database(name)
    yield dsn
    pg.drop_database(name)


@pytest.fixture
def sources_copy(tmp_path: Path) -> migrate.Sources:
    shutil.copytree(REPO_ROOT / "migrations", tmp_path / "migrations")
    shutil.copytree(REPO_ROOT / "sql", tmp_path / "sql")
    return migrate.load_sources(tmp_path)


def chatd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatd", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120, check=False)


def psql(dsn: str, path: Path) -> None:
    tool = shutil.which("psql") or str(find_pg_bin() / "psql")
    subprocess.run([tool, "-X", "-q", "-1", "-v", "ON_ERROR_STOP=1", "-f", str(path), dsn],
                   capture_output=True, text=True, check=True)


def squawk(path: Path) -> subprocess.CompletedProcess[str]:
    squawk_bin = shutil.which("squawk") or str(SQUAWK)
    return subprocess.run([squawk_bin, "--config", str(REPO_ROOT / ".squawk.toml"), "--reporter", "gcc",
                           str(path)], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("table", BIG_TABLES)
def test_squawk_fails_an_index_on_a_big_table_built_without_concurrently(tmp_path: Path, table: str) -> None:
    migration = tmp_path / "0042_index.up.sql"
    migration.write_text(f"CREATE INDEX {table}_x_idx ON chatd.{table} (created_at);\n")
    result = squawk(migration)
    assert result.returncode != 0
    assert "require-concurrent-index-creation" in result.stdout + result.stderr


def test_squawk_passes_a_concurrent_index_in_a_no_transaction_migration(tmp_path: Path) -> None:
    migration = tmp_path / "0042_index.up.sql"
    migration.write_text(f"{migrate.NO_TRANSACTION_MARKER}\n"
                         "CREATE INDEX CONCURRENTLY messages_x_idx ON chatd.messages (created_at);\n")
    result = squawk(migration)
    assert result.returncode == 0, result.stdout + result.stderr


def test_migrate_check_is_a_deploy_gate(empty_db: str, sources_copy: migrate.Sources) -> None:
    pending = chatd("migrate", "--check", "--database-url", empty_db)
    assert pending.returncode == Exit.NOT_CURRENT
    assert "0001_initial_schema pending" in pending.stderr and pending.stdout == ""
    assert chatd("migrate", "--database-url", empty_db).returncode == Exit.OK
    current = chatd("migrate", "--check", "--database-url", empty_db)
    assert (current.returncode, current.stdout, current.stderr) == (Exit.OK, "", "")
    edited = sources_copy.migrations[0].up_path
    edited.write_text(edited.read_text() + "\n-- edited\n")
    drifted = chatd("migrate", "--check", "--database-url", empty_db,
                    env={"CHATD_SQL_ROOT": str(sources_copy.root)})
    assert drifted.returncode == Exit.NOT_CURRENT and "0001_initial_schema drift" in drifted.stderr


def test_a_migration_step_gives_up_at_its_lock_timeout(empty_db: str) -> None:
    migrate.apply(empty_db, to=7, log=lambda _m: None)
    # 0008 alters chatd.providers (ACCESS EXCLUSIVE); an open transaction
    # that read it holds ACCESS SHARE until it ends
    with psycopg.connect(empty_db) as holder:
        holder.execute("SELECT count(*) FROM chatd.providers").fetchone()
        result = chatd("migrate", "--lock-timeout", "200ms", "--database-url", empty_db)
        holder.rollback()
    assert result.returncode == Exit.FAILED
    assert "55P03" in result.stderr and "--lock-timeout" in result.stderr
    with psycopg.connect(empty_db) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM chatd_meta.migrations")]
    assert 8 not in versions, "the step was rolled back"


def test_a_lock_timeout_that_is_not_a_duration_is_a_usage_error() -> None:
    result = chatd("migrate", "--lock-timeout", "soon")
    assert result.returncode == Exit.USAGE and "not a duration" in result.stderr


def test_every_step_of_a_printed_plan_sets_lock_timeout() -> None:
    plan = migrate.plan_sql(None, lock_timeout="3s")
    assert plan.count("BEGIN;") == plan.count("SET LOCAL lock_timeout = '3s';") > 1


def test_flyway_export_applied_file_by_file_gives_a_working_schema(empty_db: str, tmp_path: Path) -> None:
    out = tmp_path / "flyway"
    result = chatd("migrate", "--print", "--out", str(out))
    assert result.returncode == 0, result.stderr
    sources = migrate.load_sources()
    names = [f"V{m.version}__{m.name}.sql" for m in sources.migrations] + [REPEATABLE_FILE]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    first = (out / names[0]).read_text()
    assert first.splitlines()[1] == "SET LOCAL lock_timeout = '5s';"
    assert first.endswith(sources.migrations[0].up_sql)
    for name in names:  # as Flyway would: each file in one transaction, in order
        psql(empty_db, out / name)
    with psycopg.connect(empty_db) as conn:
        row = conn.execute("SELECT to_regprocedure('chatd.acquire_chats(text, integer)') IS NOT NULL").fetchone()
    assert row == (True,)
    header = (out / REPEATABLE_FILE).read_text().splitlines()[0]
    assert f"schema version {sources.latest:04d}" in header


def test_a_no_transaction_migration_is_exported_unchanged(sources_copy: migrate.Sources, tmp_path: Path) -> None:
    text = (f"{migrate.NO_TRANSACTION_MARKER}\n"
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_x_idx ON chatd.messages (created_at);\n")
    version = sources_copy.latest + 1
    (sources_copy.root / "migrations" / f"{version:04d}_x_index.up.sql").write_text(text)
    (sources_copy.root / "migrations" / f"{version:04d}_x_index.down.sql").write_text(
        "DROP INDEX IF EXISTS chatd.messages_x_idx;\n")
    env = {"CHATD_SQL_ROOT": str(sources_copy.root)}
    printed = chatd("migrate", "--print", "--only", str(version), env=env)
    assert (printed.returncode, printed.stdout) == (0, text)
    out = tmp_path / "one"
    assert chatd("migrate", "--print", "--only", str(version), "--out", str(out), env=env).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == [f"V{version}__x_index.sql", f"V{version}__x_index.sql.conf"]
    assert (out / f"V{version}__x_index.sql").read_text() == text
    assert (out / f"V{version}__x_index.sql.conf").read_text() == "executeInTransaction=false\n"


def _index_migration(sources: migrate.Sources, up: str, down: str) -> tuple[migrate.Sources, int]:
    """A copy of the sources with one more migration, marked chatd:no-transaction."""
    version = sources.latest + 1
    folder = sources.root / "migrations"
    (folder / f"{version:04d}_x_index.up.sql").write_text(f"{migrate.NO_TRANSACTION_MARKER}\n{up}")
    (folder / f"{version:04d}_x_index.down.sql").write_text(f"{migrate.NO_TRANSACTION_MARKER}\n{down}")
    return migrate.load_sources(sources.root), version


def _index_state(dsn: str, version: int) -> tuple[bool | None, bool]:
    """(indisvalid of chatd.messages_x_idx or None when absent, whether the ledger has version)."""
    with psycopg.connect(dsn) as conn:
        valid = conn.execute(
            "SELECT i.indisvalid FROM pg_index AS i WHERE i.indexrelid = to_regclass('chatd.messages_x_idx')"
        ).fetchone()
        recorded = conn.execute("SELECT count(*) FROM chatd_meta.migrations WHERE version = %s", (version,)).fetchone()
    return (valid[0] if valid else None), bool(recorded and recorded[0])


CONCURRENT_INDEX = "CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_x_idx ON chatd.messages (created_at);\n"


def test_a_no_transaction_migration_builds_its_index_concurrently_and_is_recorded(
    empty_db: str, sources_copy: migrate.Sources
) -> None:
    sources, version = _index_migration(
        sources_copy, CONCURRENT_INDEX, "DROP INDEX CONCURRENTLY IF EXISTS chatd.messages_x_idx;\n"
    )
    result = migrate.apply(empty_db, sources=sources, log=lambda _m: None)
    assert result.applied[-1] == f"{version:04d}_x_index"
    assert _index_state(empty_db, version) == (True, True)
    assert migrate.down(empty_db, version - 1, sources=sources, log=lambda _m: None) == [f"{version:04d}_x_index"]
    assert _index_state(empty_db, version) == (None, False)


def test_a_failing_no_transaction_migration_keeps_what_ran_and_is_not_recorded(
    empty_db: str, sources_copy: migrate.Sources
) -> None:
    sources, version = _index_migration(sources_copy, CONCURRENT_INDEX + "SELECT 1 / 0;\n", "SELECT 1;\n")
    with pytest.raises(migrate.MigrationFailed) as failed:
        migrate.apply(empty_db, sources=sources, log=lambda _m: None)
    message = str(failed.value)
    assert "statement 2" in message and "stay applied" in message and "not recorded" in message
    assert _index_state(empty_db, version) == (True, False)


def test_a_no_transaction_migration_gives_up_at_its_lock_timeout(
    empty_db: str, sources_copy: migrate.Sources
) -> None:
    sources, version = _index_migration(sources_copy, CONCURRENT_INDEX, "SELECT 1;\n")
    migrate.apply(empty_db, to=version - 1, sources=sources, log=lambda _m: None)
    # a concurrent build needs SHARE UPDATE EXCLUSIVE, which this open
    # transaction holds until it ends
    with psycopg.connect(empty_db) as holder:
        holder.execute("LOCK TABLE chatd.messages IN SHARE UPDATE EXCLUSIVE MODE")
        with pytest.raises(migrate.MigrationFailed) as failed:
            migrate.apply(empty_db, sources=sources, log=lambda _m: None, lock_timeout="200ms")
        holder.rollback()
    assert "55P03" in str(failed.value)
    valid, recorded = _index_state(empty_db, version)
    assert not recorded and valid is not True, "no valid index, no ledger row"


def test_a_printed_plan_runs_a_no_transaction_migration_outside_a_transaction(
    empty_db: str, sources_copy: migrate.Sources, tmp_path: Path
) -> None:
    sources, version = _index_migration(sources_copy, CONCURRENT_INDEX, "SELECT 1;\n")
    plan = tmp_path / "plan.sql"
    plan.write_text(migrate.plan_sql(None, sources=sources))
    tool = shutil.which("psql") or str(find_pg_bin() / "psql")
    run = subprocess.run([tool, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(plan), empty_db],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert _index_state(empty_db, version) == (True, True)
    assert migrate.status(empty_db, sources=sources)[version - 1].state == "applied"
