"""The chatd migrator: run-once versioned migrations plus repeatable SQL.

Two kinds of SQL live in the repository:

* ``migrations/NNNN_name.up.sql`` / ``NNNN_name.down.sql``: versioned schema
  changes, applied once each, in order, each in its own transaction, and
  recorded in the ledger ``chatd_meta.migrations`` with the SHA-256 of the up
  file. An applied migration whose file changed is *drift*: the migrator
  refuses to run until the file is restored.
* ``sql/*.sql``: repeatable definitions (functions, triggers, views, grants)
  written with CREATE OR REPLACE. When any of them changed since it was last
  applied, or a migration was just applied, all of them are re-applied, in
  file-name order, in one transaction. Re-applying all rather than only the changed file means a
  file that drops and recreates an object cannot silently orphan a dependent
  object defined in another file.

Everything runs under one advisory lock, so two deploys that migrate at once
serialize and the second finds nothing to do. ``plan_sql`` renders the exact
same work as a plain SQL script, ledger writes included, that a DBA can
review and apply with ``psql -v ON_ERROR_STOP=1 -f``; the runner recognises
migrations applied that way because the ledger rows are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
import sqlparse
from psycopg import sql as pgsql
from psycopg.rows import TupleRow

from chatd import __version__

__all__ = [
    "ADVISORY_LOCK_KEY",
    "DriftError",
    "MigrationError",
    "MigrationFailed",
    "Sources",
    "apply",
    "down",
    "load_sources",
    "plan_sql",
    "status",
]

# pg_advisory_lock key held while migrating: the bytes "chatdmig" read as a
# big-endian bigint. Fixed forever: plans printed by any version use it too.
ADVISORY_LOCK_KEY = int.from_bytes(b"chatdmig", "big") - 2**63

LEDGER_DDL = """\
CREATE SCHEMA IF NOT EXISTS chatd_meta;
CREATE TABLE IF NOT EXISTS chatd_meta.migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL DEFAULT current_user
);
CREATE TABLE IF NOT EXISTS chatd_meta.repeatables (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")
_TRANSACTION_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION|END)\s*;?\s*$", re.IGNORECASE
)


class MigrationError(Exception):
    """A migration problem the operator must fix; the message says how."""


class DriftError(MigrationError):
    """An applied migration's file no longer matches what was applied."""


class MigrationFailed(MigrationError):
    """A statement of a migration or repeatable file failed; rolled back."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up_path: Path
    down_path: Path

    @property
    def up_sql(self) -> str:
        return self.up_path.read_text(encoding="utf-8")

    @property
    def down_sql(self) -> str:
        return self.down_path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return _sha256(self.up_path)

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class Repeatable:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return _sha256(self.path)


@dataclass(frozen=True)
class Sources:
    """The migrations and repeatable files found on disk."""

    root: Path
    migrations: tuple[Migration, ...]
    repeatables: tuple[Repeatable, ...]

    @property
    def latest(self) -> int:
        return self.migrations[-1].version if self.migrations else 0

    def migration(self, version: int) -> Migration | None:
        return next((m for m in self.migrations if m.version == version), None)


@dataclass
class Ledger:
    """What the database says was applied."""

    migrations: dict[int, tuple[str, str, datetime]] = field(default_factory=dict)
    repeatables: dict[str, str] = field(default_factory=dict)

    @property
    def current(self) -> int:
        return max(self.migrations, default=0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_sql_root() -> Path:
    """Directory holding ``migrations/`` and ``sql/``: $CHATD_SQL_ROOT, the
    source checkout this module lives in, or the copy packaged in the wheel."""
    explicit = os.environ.get("CHATD_SQL_ROOT")
    if explicit:
        return Path(explicit)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "migrations").is_dir():
        return checkout
    return Path(__file__).resolve().parent / "_sql"


def load_sources(root: Path | None = None) -> Sources:
    """Read and validate the migration and repeatable files under ``root``."""
    root = root or find_sql_root()
    migrations_dir = root / "migrations"
    if not migrations_dir.is_dir():
        raise MigrationError(f"no migrations directory at {migrations_dir}")
    ups: dict[int, Path] = {}
    downs: dict[int, Path] = {}
    names: dict[int, str] = {}
    for path in sorted(migrations_dir.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if not match:
            raise MigrationError(
                f"{path}: migration files must be named NNNN_name.up.sql / NNNN_name.down.sql"
            )
        version, name, direction = int(match[1]), match[2], match[3]
        if names.setdefault(version, name) != name:
            raise MigrationError(
                f"{path}: version {version:04d} is used by two names "
                f"({names[version]!r} and {name!r})"
            )
        (ups if direction == "up" else downs)[version] = path
    migrations = []
    for version in sorted(names):
        if version not in ups or version not in downs:
            missing = "up" if version not in ups else "down"
            raise MigrationError(
                f"migration {version:04d}_{names[version]} has no .{missing}.sql file"
            )
        if version == 0:
            raise MigrationError("migration versions start at 0001")
        migrations.append(Migration(version, names[version], ups[version], downs[version]))
    sql_dir = root / "sql"
    repeatables = tuple(Repeatable(p) for p in sorted(sql_dir.glob("*.sql"))) if sql_dir.is_dir() else ()
    return Sources(root, tuple(migrations), repeatables)


# ---------------------------------------------------------------------------
# Statement splitting: run files statement by statement, so a failure names
# the statement and its line.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    text: str
    line: int


def split_statements(text: str) -> list[Statement]:
    """Split a SQL file into statements (dollar quotes, comments and strings
    respected), each with the line it starts on."""
    statements: list[Statement] = []
    cursor = 0
    for raw in sqlparse.split(text):
        if not sqlparse.format(raw, strip_comments=True).strip():
            continue
        start = text.find(raw, cursor)
        if start < 0:  # sqlparse normalised something; fall back to the cursor
            start = cursor
        else:
            cursor = start + len(raw)
        # the line of the first non-comment token, not of a leading comment
        code = sqlparse.format(raw, strip_comments=True).strip().splitlines()[0]
        offset = raw.find(code)
        line = text.count("\n", 0, start + max(offset, 0)) + 1
        statements.append(Statement(raw, line))
    return statements


def _check_no_transaction_control(path: Path, statements: Sequence[Statement]) -> None:
    for stmt in statements:
        if _TRANSACTION_CONTROL.match(sqlparse.format(stmt.text, strip_comments=True)):
            raise MigrationError(
                f"{path}:{stmt.line}: transaction control is not allowed in a migration "
                "file; the migrator wraps each file in its own transaction"
            )


def _first_line(text: str) -> str:
    code = sqlparse.format(text, strip_comments=True).strip()
    first = code.splitlines()[0] if code else text.strip()
    return first if len(first) <= 120 else first[:117] + "..."


def _run_file(conn: psycopg.Connection[TupleRow], path: Path, text: str) -> None:
    statements = split_statements(text)
    _check_no_transaction_control(path, statements)
    for index, stmt in enumerate(statements, start=1):
        try:
            conn.execute(stmt.text.encode())
        except psycopg.Error as exc:
            diag = exc.diag
            where = f"\n  context: {diag.context}" if diag.context else ""
            raise MigrationFailed(
                f"{path.name}: statement {index} (line {stmt.line}) failed and the "
                f"transaction was rolled back:\n  {_first_line(stmt.text)}\n"
                f"  {diag.severity or 'ERROR'} {diag.sqlstate or ''}: "
                f"{diag.message_primary or exc}{where}"
            ) from exc


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
        raise MigrationError(f"cannot connect to {redact(dsn)}: {exc}".rstrip()) from exc
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
) -> ApplyResult:
    """Apply pending migrations up to ``to`` (default: the latest), then the
    repeatable files if any changed and the schema is at the latest version."""
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
            with conn.transaction():
                _run_file(conn, migration.up_path, migration.up_sql)
                conn.execute(
                    "INSERT INTO chatd_meta.migrations (version, name, checksum) "
                    "VALUES (%s, %s, %s)",
                    (migration.version, migration.name, migration.checksum),
                )
            log(f"applied {migration.label} ({(time.monotonic() - started) * 1000:.0f} ms)")
            result.applied.append(migration.label)
        # Re-applied after any migration too: a new table or type must get
        # the ownership and grants that sql/9x_*.sql establish.
        if target == sources.latest and (
            result.applied or repeatables_changed(sources, read_ledger(conn))
        ):
            started = time.monotonic()
            with conn.transaction():
                for repeatable in sources.repeatables:
                    _run_file(conn, repeatable.path, repeatable.sql)
                _record_repeatables(conn, sources)
            log(
                f"applied {len(sources.repeatables)} repeatable files from sql/ "
                f"({(time.monotonic() - started) * 1000:.0f} ms)"
            )
            result.repeatables_applied = True
    if not result.applied and not result.repeatables_applied:
        log("nothing to do: the database is up to date")
    return result


def _record_repeatables(conn: psycopg.Connection[TupleRow], sources: Sources) -> None:
    conn.execute("DELETE FROM chatd_meta.repeatables")
    for repeatable in sources.repeatables:
        conn.execute(
            "INSERT INTO chatd_meta.repeatables (name, checksum) VALUES (%s, %s)",
            (repeatable.name, repeatable.checksum),
        )


def down(
    dsn: str | None, to: int, *, sources: Sources | None = None, log: Log = _stderr
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
            with conn.transaction():
                _run_file(conn, migration.down_path, migration.down_sql)
                conn.execute("DELETE FROM chatd_meta.migrations WHERE version = %s", (version,))
                # Repeatable objects may have gone with the schema they lived in;
                # forget them so the next `chatd migrate` re-applies them all.
                conn.execute("DELETE FROM chatd_meta.repeatables")
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


def plan_sql(
    dsn: str | None,
    *,
    to: int | None = None,
    down_to: int | None = None,
    sources: Sources | None = None,
) -> str:
    """The plan as one plain SQL script, ledger writes included.

    With a DSN, only what that database still needs; without one, the full
    plan for an empty database. Each step is its own transaction that takes
    the same advisory lock as the runner and refuses to run twice."""
    sources = sources or load_sources()
    ledger = Ledger()
    if dsn:
        with connect(dsn) as conn:
            ledger = read_ledger(conn)
        check_drift(sources, ledger)
    lock = f"DO $chatd_lock$ BEGIN PERFORM pg_advisory_xact_lock({ADVISORY_LOCK_KEY}); END $chatd_lock$;"
    out = [
        f"-- chatd {__version__} migration plan, generated {datetime.now():%Y-%m-%d %H:%M:%S}",
        f"-- for: {redact(dsn) if dsn else 'an empty database'}",
        "-- Apply with: psql -v ON_ERROR_STOP=1 -f this-file.sql \"$DATABASE_URL\"",
        "-- Every step is one transaction; a step that was already applied refuses to",
        "-- run again. `chatd migrate --status` reads the same ledger afterwards.",
        "",
    ]
    if down_to is not None:
        for version in sorted((v for v in ledger.migrations if v > down_to), reverse=True):
            migration = sources.migration(version)
            assert migration is not None
            out += [
                f"-- revert {migration.label}",
                "BEGIN;",
                lock,
                _guard(migration, applied=True),
                migration.down_sql.rstrip(),
                f"DELETE FROM chatd_meta.migrations WHERE version = {migration.version};",
                "DELETE FROM chatd_meta.repeatables;",
                "COMMIT;",
                "",
            ]
        return "\n".join(out)
    target = sources.latest if to is None else to
    out += ["BEGIN;", lock, LEDGER_DDL.rstrip(), "COMMIT;", ""]
    for migration in sources.migrations:
        if migration.version > target or migration.version in ledger.migrations:
            continue
        out += [
            f"-- migration {migration.label} (sha256 {migration.checksum})",
            "BEGIN;",
            lock,
            _guard(migration, applied=False),
            migration.up_sql.rstrip(),
            "INSERT INTO chatd_meta.migrations (version, name, checksum) VALUES "
            f"({migration.version}, {_literal(migration.name)}, {_literal(migration.checksum)});",
            "COMMIT;",
            "",
        ]
    migrations_pending = any(
        m.version <= target and m.version not in ledger.migrations for m in sources.migrations
    )
    if target == sources.latest and (
        not dsn or migrations_pending or repeatables_changed(sources, ledger)
    ):
        out += ["-- repeatable definitions from sql/, all re-applied together", "BEGIN;", lock]
        for repeatable in sources.repeatables:
            out += [f"-- sql/{repeatable.name} (sha256 {repeatable.checksum})", repeatable.sql.rstrip(), ""]
        out.append("DELETE FROM chatd_meta.repeatables;")
        out += [
            "INSERT INTO chatd_meta.repeatables (name, checksum) VALUES "
            f"({_literal(r.name)}, {_literal(r.checksum)});"
            for r in sources.repeatables
        ]
        out += ["COMMIT;", ""]
    return "\n".join(out)


def _literal(value: str) -> str:
    return pgsql.Literal(value).as_string(None)


def _guard(migration: Migration, *, applied: bool) -> str:
    condition = "NOT EXISTS" if applied else "EXISTS"
    state = "is not applied" if applied else "is already applied"
    return (
        "DO $chatd_guard$ BEGIN\n"
        f"    IF {condition} (SELECT FROM chatd_meta.migrations WHERE version = {migration.version}) THEN\n"
        f"        RAISE EXCEPTION 'chatd migration {migration.label} {state}';\n"
        "    END IF;\n"
        "END $chatd_guard$;"
    )


# ---------------------------------------------------------------------------
# Command line: `chatd migrate`
# ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Apply pending migrations, then the repeatable sql/ files whose text changed, "
        "under one advisory lock. `chatd migrate down N` reverts every migration above N."
    )
    parser.add_argument("direction", nargs="?", choices=["up", "down"], default="up",
                        help="up (default) or down")
    parser.add_argument("version", nargs="?", type=int,
                        help="for down: the version to go back to (0 reverts everything)")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                        help="PostgreSQL URL (default: $DATABASE_URL)")
    parser.add_argument("--to", type=int, metavar="N", help="apply migrations up to version N only")
    parser.add_argument("--status", action="store_true", help="show applied and pending files")
    parser.add_argument("--print", dest="print_plan", action="store_true",
                        help="print the plan as SQL for psql -v ON_ERROR_STOP=1 -f; change nothing")


def run(args: argparse.Namespace) -> int:
    try:
        if args.direction == "down":
            if args.version is None:
                raise MigrationError("`chatd migrate down N` needs the version N to go back to")
            if args.print_plan:
                print(plan_sql(args.database_url, down_to=args.version))
            else:
                down(args.database_url, args.version)
            return 0
        if args.version is not None:
            raise MigrationError("a version is only taken by `down`; use --to N to migrate up to N")
        if args.status:
            rows = status(args.database_url)
            for row in rows:
                when = f"  {row.applied_at:%Y-%m-%d %H:%M:%S}" if row.applied_at else ""
                print(f"{row.state:<13} {row.name}{when}")
            pending = sum(r.state != "applied" for r in rows)
            print(f"{len(rows) - pending} applied, {pending} not applied")
            return 1 if any(r.state in ("drift", "missing-file") for r in rows) else 0
        if args.print_plan:
            print(plan_sql(args.database_url, to=args.to))
            return 0
        apply(args.database_url, to=args.to)
        return 0
    except MigrationError as exc:
        print(f"chatd migrate: {exc}", file=sys.stderr)
        return 2
