"""The migrator, as a DBA relies on it: run-once migrations, repeatable SQL,
drift detection, printed plans, one advisory lock, clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from repo_support import REPO_ROOT

from chatd import migrate
from chatd.localpg import find_pg_bin
from chatd.testing import DatabaseServer

VERSIONS = [m.version for m in migrate.load_sources().migrations]


@pytest.fixture
def empty_db(pg: DatabaseServer) -> Iterator[str]:
    """A database with nothing in it: not cloned from the migrated template."""
    name = f"chatd_empty_{uuid.uuid4().hex[:10]}"
    dsn = pg.create_database(name)
    yield dsn
    pg.drop_database(name)


@pytest.fixture
def sources_copy(tmp_path: Path) -> migrate.Sources:
    """A private copy of migrations/ and sql/ that a test may edit."""
    shutil.copytree(REPO_ROOT / "migrations", tmp_path / "migrations")
    shutil.copytree(REPO_ROOT / "sql", tmp_path / "sql", dirs_exist_ok=True)
    (tmp_path / "sql").mkdir(exist_ok=True)
    return migrate.load_sources(tmp_path)


def _quiet(_message: str) -> None:
    pass


def _tool(name: str) -> str:
    found = shutil.which(name)
    return found or str(find_pg_bin() / name)


def schema_dump(dsn: str) -> str:
    """The chatd schemas as pg_dump prints them (no data, no owners)."""
    result = subprocess.run(
        [_tool("pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
         "--schema=chatd", "--schema=chatd_meta", dsn],
        capture_output=True, text=True, check=True,
    )
    return "\n".join(
        line for line in result.stdout.splitlines()
        # \restrict / \unrestrict carry a random key per dump
        if not line.startswith(("--", "\\restrict", "\\unrestrict"))
    )


def ledger_versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM chatd_meta.migrations ORDER BY 1")]


def chatd_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatd", *args],
        capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120, check=False,
    )


def test_up_down_up_gives_the_same_schema_as_a_fresh_install(pg: DatabaseServer, empty_db: str) -> None:
    migrate.apply(empty_db, log=_quiet)
    first = schema_dump(empty_db)
    migrate.down(empty_db, 0, log=_quiet)
    assert ledger_versions(empty_db) == []
    migrate.apply(empty_db, log=_quiet)
    fresh_name = f"chatd_fresh_{uuid.uuid4().hex[:10]}"
    fresh = pg.create_database(fresh_name)
    try:
        migrate.apply(fresh, log=_quiet)
        assert schema_dump(empty_db) == first
        assert schema_dump(fresh) == first
    finally:
        pg.drop_database(fresh_name)


def test_down_to_zero_leaves_no_chatd_objects(empty_db: str) -> None:
    migrate.apply(empty_db, log=_quiet)
    migrate.down(empty_db, 0, log=_quiet)
    with psycopg.connect(empty_db) as conn:
        row = conn.execute("SELECT to_regnamespace('chatd')").fetchone()
    assert row == (None,)


def test_second_run_does_nothing(empty_db: str) -> None:
    migrate.apply(empty_db, log=_quiet)
    again = migrate.apply(empty_db, log=_quiet)
    assert again.applied == [] and not again.repeatables_applied


def test_printed_plan_applied_with_psql_is_recognised_by_the_runner(empty_db: str, tmp_path: Path) -> None:
    plan = tmp_path / "plan.sql"
    printed = chatd_cli("migrate", "--print", "--database-url", empty_db)
    assert printed.returncode == 0, printed.stderr
    plan.write_text(printed.stdout)
    subprocess.run(
        [_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(plan), empty_db],
        capture_output=True, text=True, check=True,
    )
    status = chatd_cli("migrate", "--status", "--database-url", empty_db)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "not applied" in status.stdout and "0 not applied" in status.stdout
    assert not any(line.startswith(("pending", "changed")) for line in status.stdout.splitlines())
    again = migrate.apply(empty_db, log=_quiet)
    assert again.applied == [] and not again.repeatables_applied


def test_printed_plan_refuses_to_apply_a_migration_twice(empty_db: str, tmp_path: Path) -> None:
    plan = tmp_path / "plan.sql"
    plan.write_text(migrate.plan_sql(None))
    migrate.apply(empty_db, log=_quiet)
    result = subprocess.run(
        [_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(plan), empty_db],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode != 0
    assert "0001_initial_schema is already applied" in result.stderr


def test_plan_for_an_up_to_date_database_is_empty_of_steps(empty_db: str) -> None:
    migrate.apply(empty_db, log=_quiet)
    plan = migrate.plan_sql(empty_db)
    assert "-- migration" not in plan and "-- repeatable" not in plan


def test_edited_applied_migration_is_refused_as_drift_naming_the_file(
    empty_db: str, sources_copy: migrate.Sources
) -> None:
    migrate.apply(empty_db, sources=sources_copy, log=_quiet)
    edited = sources_copy.migrations[0].up_path
    edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
    with pytest.raises(migrate.DriftError, match=str(edited)):
        migrate.apply(empty_db, sources=sources_copy, log=_quiet)


def test_drift_makes_the_cli_exit_non_zero_with_the_file_name(
    empty_db: str, sources_copy: migrate.Sources
) -> None:
    migrate.apply(empty_db, sources=sources_copy, log=_quiet)
    edited = sources_copy.migrations[0].up_path
    edited.write_text(edited.read_text().replace("-- 0001", "-- 0001 (edited)", 1))
    result = chatd_cli("migrate", "--database-url", empty_db, env={"CHATD_SQL_ROOT": str(sources_copy.root)})
    assert result.returncode == 4  # Exit.NOT_CURRENT (issue 17: one exit-code table)
    assert "drift detected" in result.stderr and edited.name in result.stderr


def _add_migration(sources: migrate.Sources, name: str, up: str, down: str) -> migrate.Sources:
    version = sources.latest + 1
    (sources.root / "migrations" / f"{version:04d}_{name}.up.sql").write_text(up)
    (sources.root / "migrations" / f"{version:04d}_{name}.down.sql").write_text(down)
    return migrate.load_sources(sources.root)


def test_failing_migration_rolls_back_and_names_file_statement_and_line(
    empty_db: str, sources_copy: migrate.Sources
) -> None:
    broken = _add_migration(
        sources_copy, "broken",
        "-- creates a table, then fails\nCREATE TABLE chatd.half_done (id int);\n\nSELECT 1 / 0;\n",
        "DROP TABLE chatd.half_done;\n",
    )
    with pytest.raises(migrate.MigrationFailed) as failure:
        migrate.apply(empty_db, sources=broken, log=_quiet)
    message = str(failure.value)
    assert f"{broken.latest:04d}_broken.up.sql" in message
    assert "statement 2 (line 4)" in message and "SELECT 1 / 0" in message
    assert "division by zero" in message
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('chatd.half_done')").fetchone() == (None,)
    assert ledger_versions(empty_db) == VERSIONS


def test_transaction_control_in_a_migration_is_refused(empty_db: str, sources_copy: migrate.Sources) -> None:
    sneaky = _add_migration(sources_copy, "sneaky", "COMMIT;\nCREATE TABLE chatd.x (id int);\n", "SELECT 1;\n")
    with pytest.raises(migrate.MigrationError, match="transaction control"):
        migrate.apply(empty_db, sources=sneaky, log=_quiet)


def test_to_applies_only_up_to_the_given_version_and_down_reverts_above_it(
    empty_db: str, sources_copy: migrate.Sources
) -> None:
    two = _add_migration(
        sources_copy, "extra_table", "CREATE TABLE chatd.extra (id int);\n", "DROP TABLE chatd.extra;\n"
    )
    migrate.apply(empty_db, to=VERSIONS[-1], sources=two, log=_quiet)
    assert ledger_versions(empty_db) == VERSIONS
    migrate.apply(empty_db, sources=two, log=_quiet)
    assert ledger_versions(empty_db) == [*VERSIONS, two.latest]
    migrate.down(empty_db, VERSIONS[-1], sources=two, log=_quiet)
    assert ledger_versions(empty_db) == VERSIONS
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT to_regclass('chatd.extra')").fetchone() == (None,)


def test_repeatables_are_reapplied_after_a_new_migration(
    empty_db: str, sources_copy: migrate.Sources
) -> None:
    migrate.apply(empty_db, sources=sources_copy, log=_quiet)
    newer = _add_migration(
        sources_copy, "new_table", "CREATE TABLE chatd.added_later (id int);\n",
        "DROP TABLE chatd.added_later;\n",
    )
    result = migrate.apply(empty_db, sources=newer, log=_quiet)
    assert result.repeatables_applied, "ownership and grants must cover the new table"
    with psycopg.connect(empty_db) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'chatd.added_later'::regclass"
        ).fetchone()
    assert owner == ("chatd_owner",)


def test_changed_repeatable_file_is_reapplied(empty_db: str, sources_copy: migrate.Sources) -> None:
    migrate.apply(empty_db, sources=sources_copy, log=_quiet)
    extra = sources_copy.root / "sql" / "99_test_only.sql"
    extra.write_text("CREATE OR REPLACE FUNCTION chatd.test_only() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n")
    result = migrate.apply(empty_db, sources=migrate.load_sources(sources_copy.root), log=_quiet)
    assert result.repeatables_applied
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT chatd.test_only()").fetchone() == (1,)


def _waiting_on_advisory_lock(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'chatd-migrate' AND wait_event = 'advisory'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_two_concurrent_migrate_processes_both_succeed_and_apply_once(empty_db: str) -> None:
    # Hold the migration lock so both processes are provably waiting on it at
    # the same time before either can start; then let them race.
    with psycopg.connect(empty_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrate.ADVISORY_LOCK_KEY,))
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "chatd", "migrate", "--database-url", empty_db],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(2)
        ]
        deadline = time.monotonic() + 60
        while _waiting_on_advisory_lock(holder) < 2:
            assert time.monotonic() < deadline, "both migrators never reached the lock"
            assert all(p.poll() is None for p in procs), "a migrator exited early"
            time.sleep(0.02)  # polling an observable state, not guessing a timing
        holder.execute("SELECT pg_advisory_unlock(%s)", (migrate.ADVISORY_LOCK_KEY,))
        outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    logs = "".join(err for _, err in outputs)
    assert logs.count("applied 0001_initial_schema") == 1
    assert logs.count("nothing to do") == 1
    assert ledger_versions(empty_db) == VERSIONS


def test_missing_database_url_is_a_clear_error() -> None:
    result = chatd_cli("migrate", env={"DATABASE_URL": ""})
    assert result.returncode == 2
    assert "no database given" in result.stderr


def test_malformed_database_url_is_a_clear_error() -> None:
    result = chatd_cli("migrate", "--database-url", "this is not a dsn")
    assert result.returncode == 2
    assert "invalid database URL" in result.stderr


def test_unreachable_database_is_a_clear_error_without_the_password() -> None:
    result = chatd_cli("migrate", "--database-url", "postgresql://chatd:s3cret@127.0.0.1:1/chatd")
    assert result.returncode == 3  # Exit.UNREACHABLE (issue 17)
    assert "cannot connect to" in result.stderr
    assert "s3cret" not in result.stderr


def test_statement_splitter_keeps_dollar_quoted_bodies_whole() -> None:
    text = (
        "-- header\nCREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\n"
        "BEGIN\n  RETURN 1; -- inner ; semicolon\nEND\n$$;\n\nSELECT ';' AS x;\n"
    )
    statements = migrate.split_statements(text)
    assert [s.line for s in statements] == [2, 8]
    assert "RETURN 1;" in statements[0].text
