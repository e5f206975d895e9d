"""Applying and reverting: the connection, the ledger (``chatd_meta``) and
its advisory lock, `apply`, `down` and `status` (one file's run: steps.py)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import psycopg
from psycopg.rows import TupleRow

from chatd.migrate.sources import (
    ADVISORY_LOCK_KEY,
    DEFAULT_LOCK_TIMEOUT,
    LEDGER_DDL,
    DatabaseUnreachable,
    DriftError,
    Ledger,
    Migration,
    MigrationError,
    Sources,
    load_sources,
)
from chatd.migrate.steps import Statement, run_file, run_step, set_lock_timeout, split_statements

__all__ = [
    "ApplyResult",
    "Statement",
    "StatusRow",
    "apply",
    "check_drift",
    "connect",
    "down",
    "read_ledger",
    "redact",
    "repeatables_changed",
    "split_statements",
    "status",
]


# ---------------------------------------------------------------------------
# Connections and the ledger
# ---------------------------------------------------------------------------


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def connect(dsn: str | None) -> psycopg.Connection[TupleRow]:
    """An autocommit connection, with errors an operator can act on."""
    if not dsn:
        raise MigrationError(
            "no database given: set DATABASE_URL or pass --database-url "
            "(for example postgresql://user@localhost:5432/chatd)"
        )
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise MigrationError(f"invalid database URL: {exc}") from exc
    try:
        conn: psycopg.Connection[TupleRow] = psycopg.connect(
            dsn, autocommit=True, connect_timeout=10, application_name="chatd-migrate"
        )
    except psycopg.OperationalError as exc:
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise DatabaseUnreachable(f"cannot connect to {redact(dsn)}: {first}") from exc
    return conn


class _Locked:
    """Hold the migration advisory lock (session level) for a block."""

    def __init__(self, conn: psycopg.Connection[TupleRow]) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))

    def __exit__(self, *exc: object) -> None:
        if not self.conn.closed:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def _ensure_ledger(conn: psycopg.Connection[TupleRow]) -> None:
    with conn.transaction():
        for stmt in split_statements(LEDGER_DDL):
            conn.execute(stmt.text.encode())


def read_ledger(conn: psycopg.Connection[TupleRow]) -> Ledger:
    ledger = Ledger()
    exists = conn.execute("SELECT to_regclass('chatd_meta.migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return ledger
    for version, name, checksum, applied_at in conn.execute(
        "SELECT version, name, checksum, applied_at FROM chatd_meta.migrations"
    ).fetchall():
        ledger.migrations[int(version)] = (str(name), str(checksum), applied_at)
    for name, checksum in conn.execute(
        "SELECT name, checksum FROM chatd_meta.repeatables"
    ).fetchall():
        ledger.repeatables[str(name)] = str(checksum)
    return ledger


def check_drift(sources: Sources, ledger: Ledger) -> None:
    """Refuse when an applied migration was edited or its file is gone."""
    problems = []
    for version, (name, checksum, applied_at) in sorted(ledger.migrations.items()):
        migration = sources.migration(version)
        if migration is None:
            problems.append(
                f"migration {version:04d}_{name} is applied (at {applied_at:%Y-%m-%d %H:%M}) "
                f"but its file is missing from {sources.root / 'migrations'}"
            )
        elif migration.checksum != checksum:
            problems.append(
                f"{migration.up_path} was edited after it was applied "
                f"(applied sha256 {checksum[:12]}, file sha256 {migration.checksum[:12]}); "
                "restore the file and put the change in a new migration"
            )
    if problems:
        raise DriftError("drift detected:\n  " + "\n  ".join(problems))


def repeatables_changed(sources: Sources, ledger: Ledger) -> bool:
    on_disk = {r.name: r.checksum for r in sources.repeatables}
    return on_disk != ledger.repeatables


# ---------------------------------------------------------------------------
# Operations
# ---------------------------------------------------------------------------

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass
class ApplyResult:
    applied: list[str]
    repeatables_applied: bool


def apply(
    dsn: str | None,
    *,
    to: int | None = None,
    sources: Sources | None = None,
    log: Log = _stderr,
    lock_timeout: str | None = DEFAULT_LOCK_TIMEOUT,
) -> ApplyResult:
    """Apply pending migrations up to ``to`` (default: the latest), then the
    repeatable files if any changed and the schema is at the latest version.
    Each transaction waits at most ``lock_timeout`` for any lock."""
    sources = sources or load_sources()
    target = sources.latest if to is None else to
    if target > sources.latest or (target != 0 and sources.migration(target) is None):
        raise MigrationError(f"no migration {target:04d} (latest is {sources.latest:04d})")
    result = ApplyResult([], False)
    with connect(dsn) as conn, _Locked(conn):
        _ensure_ledger(conn)
        ledger = read_ledger(conn)
        check_drift(sources, ledger)
        if ledger.current > target:
            raise MigrationError(
                f"the database is at {ledger.current:04d}, above --to {target:04d}; "
                f"use `chatd migrate down {target}` to go back"
            )
        for migration in sources.migrations:
            if migration.version > target or migration.version in ledger.migrations:
                continue
            started = time.monotonic()
            run_step(conn, migration.up_path, migration.up_sql, lock_timeout, partial(_record, conn, migration))
            log(f"applied {migration.label} ({(time.monotonic() - started) * 1000:.0f} ms)")
            result.applied.append(migration.label)
        # Re-applied after any migration too: a new table or type must get
        # the ownership and grants that sql/9x_*.sql establish.
        if target == sources.latest and (
            result.applied or repeatables_changed(sources, read_ledger(conn))
        ):
            started = time.monotonic()
            with conn.transaction():
                set_lock_timeout(conn, lock_timeout)
                for repeatable in sources.repeatables:
                    run_file(conn, repeatable.path, repeatable.sql)
                _record_repeatables(conn, sources)
            log(
                f"applied {len(sources.repeatables)} repeatable files from sql/ "
                f"({(time.monotonic() - started) * 1000:.0f} ms)"
            )
            result.repeatables_applied = True
    if not result.applied and not result.repeatables_applied:
        log("nothing to do: the database is up to date")
    return result


def _record(conn: psycopg.Connection[TupleRow], migration: Migration) -> None:
    conn.execute(
        "INSERT INTO chatd_meta.migrations (version, name, checksum) VALUES (%s, %s, %s)",
        (migration.version, migration.name, migration.checksum),
    )


def _forget(conn: psycopg.Connection[TupleRow], version: int) -> None:
    conn.execute("DELETE FROM chatd_meta.migrations WHERE version = %s", (version,))
    # Repeatable objects may have gone with the schema they lived in; forget
    # them so the next `chatd migrate` re-applies them all.
    conn.execute("DELETE FROM chatd_meta.repeatables")


def _record_repeatables(conn: psycopg.Connection[TupleRow], sources: Sources) -> None:
    conn.execute("DELETE FROM chatd_meta.repeatables")
    for repeatable in sources.repeatables:
        conn.execute(
            "INSERT INTO chatd_meta.repeatables (name, checksum) VALUES (%s, %s)",
            (repeatable.name, repeatable.checksum),
        )


def down(
    dsn: str | None, to: int, *, sources: Sources | None = None, log: Log = _stderr,
    lock_timeout: str | None = DEFAULT_LOCK_TIMEOUT,
) -> list[str]:
    """Revert every applied migration above version ``to``, newest first."""
    sources = sources or load_sources()
    if to < 0:
        raise MigrationError("down takes a version >= 0 (0 reverts everything)")
    reverted: list[str] = []
    with connect(dsn) as conn, _Locked(conn):
        _ensure_ledger(conn)
        ledger = read_ledger(conn)
        check_drift(sources, ledger)
        for version in sorted((v for v in ledger.migrations if v > to), reverse=True):
            migration = sources.migration(version)
            assert migration is not None  # check_drift guarantees it
            run_step(conn, migration.down_path, migration.down_sql, lock_timeout, partial(_forget, conn, version))
            log(f"reverted {migration.label}")
            reverted.append(migration.label)
    if not reverted:
        log(f"nothing to do: no applied migration above {to:04d}")
    return reverted


@dataclass
class StatusRow:
    kind: str  # migration | repeatable
    name: str
    state: str  # applied | pending | drift | missing-file | changed
    applied_at: datetime | None = None


def status(dsn: str | None, *, sources: Sources | None = None) -> list[StatusRow]:
    sources = sources or load_sources()
    with connect(dsn) as conn:
        ledger = read_ledger(conn)
    rows: list[StatusRow] = []
    for migration in sources.migrations:
        entry = ledger.migrations.get(migration.version)
        if entry is None:
            rows.append(StatusRow("migration", migration.label, "pending"))
        else:
            state = "applied" if entry[1] == migration.checksum else "drift"
            rows.append(StatusRow("migration", migration.label, state, entry[2]))
    for version, (name, _, applied_at) in sorted(ledger.migrations.items()):
        if sources.migration(version) is None:
            rows.append(StatusRow("migration", f"{version:04d}_{name}", "missing-file", applied_at))
    for repeatable in sources.repeatables:
        recorded = ledger.repeatables.get(repeatable.name)
        state = (
            "pending" if recorded is None else "applied" if recorded == repeatable.checksum else "changed"
        )
        rows.append(StatusRow("repeatable", f"sql/{repeatable.name}", state))
    return rows
