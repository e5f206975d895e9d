"""`plan_sql`: the same work as `apply` / `down`, rendered as one plain SQL
script (ledger writes included) for review and ``psql -v ON_ERROR_STOP=1 -f``."""

from __future__ import annotations

from datetime import datetime

from psycopg import sql as pgsql

from chatd import __version__
from chatd.migrate.runner import (
    check_drift,
    connect,
    read_ledger,
    redact,
    repeatables_changed,
)
from chatd.migrate.sources import (
    ADVISORY_LOCK_KEY,
    DEFAULT_LOCK_TIMEOUT,
    LEDGER_DDL,
    Ledger,
    Migration,
    Sources,
    load_sources,
    no_transaction,
)

__all__ = ["plan_sql"]


def plan_sql(
    dsn: str | None,
    *,
    to: int | None = None,
    down_to: int | None = None,
    sources: Sources | None = None,
    lock_timeout: str | None = DEFAULT_LOCK_TIMEOUT,
) -> str:
    """The plan as one plain SQL script, ledger writes included.

    With a DSN, only what that database still needs; without one, the full
    plan for an empty database. Each step is its own transaction that takes
    the same advisory lock as the runner and refuses to run twice."""
    # Long on purpose: it reads top to bottom as the script it prints (header,
    # ledger, migrations, repeatables); split, the order would be hidden.
    sources = sources or load_sources()
    ledger = Ledger()
    if dsn:
        with connect(dsn) as conn:
            ledger = read_ledger(conn)
        check_drift(sources, ledger)
    lock = f"DO $chatd_lock$ BEGIN PERFORM pg_advisory_xact_lock({ADVISORY_LOCK_KEY}); END $chatd_lock$;"
    if lock_timeout:  # each step waits at most this long for a lock (see DEFAULT_LOCK_TIMEOUT)
        lock += f"\nSET LOCAL lock_timeout = {_literal(lock_timeout)};"
    out = [
        f"-- chatd {__version__} migration plan, generated {datetime.now():%Y-%m-%d %H:%M:%S}",
        f"-- for: {redact(dsn) if dsn else 'an empty database'}",
        "-- Apply with: psql -v ON_ERROR_STOP=1 -f this-file.sql \"$DATABASE_URL\"",
        "-- Every step is one transaction (but a file marked chatd:no-transaction); a step",
        "-- that was already applied refuses to run again. `chatd migrate --status` reads",
        "-- the same ledger afterwards.",
        "",
    ]
    if down_to is not None:
        for version in sorted((v for v in ledger.migrations if v > down_to), reverse=True):
            migration = sources.migration(version)
            assert migration is not None
            forget = [f"DELETE FROM chatd_meta.migrations WHERE version = {migration.version};",
                      "DELETE FROM chatd_meta.repeatables;"]
            out += [f"-- revert {migration.label}",
                    *_step(lock, _guard(migration, applied=True), migration.down_sql, forget, lock_timeout)]
        return "\n".join(out)
    target = sources.latest if to is None else to
    out += ["BEGIN;", lock, LEDGER_DDL.rstrip(), "COMMIT;", ""]
    for migration in sources.migrations:
        if migration.version > target or migration.version in ledger.migrations:
            continue
        record = ("INSERT INTO chatd_meta.migrations (version, name, checksum) VALUES "
                  f"({migration.version}, {_literal(migration.name)}, {_literal(migration.checksum)});")
        out += [f"-- migration {migration.label} (sha256 {migration.checksum})",
                *_step(lock, _guard(migration, applied=False), migration.up_sql, [record], lock_timeout)]
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


def _step(lock: str, guard: str, text: str, ledger: list[str], lock_timeout: str | None) -> list[str]:
    """One file and its ledger write in one transaction; a file marked
    chatd:no-transaction runs as it is, between a transaction that checks
    the ledger and one that writes it (as `run_step` applies it), under the
    session's advisory lock and lock_timeout."""
    if not no_transaction(text):
        return ["BEGIN;", lock, guard, text.rstrip(), *ledger, "COMMIT;", ""]
    session = [f"SELECT pg_advisory_lock({ADVISORY_LOCK_KEY});"]
    if lock_timeout:
        session.append(f"SET lock_timeout = {_literal(lock_timeout)};")
    return [
        "-- outside a transaction (chatd:no-transaction): the statements before a",
        "-- failing one stay applied; the ledger is written only after all of them",
        *session, "BEGIN;", guard, "COMMIT;", text.rstrip(),
        "BEGIN;", guard, *ledger, "COMMIT;",
        *(["RESET lock_timeout;"] if lock_timeout else []),
        f"SELECT pg_advisory_unlock({ADVISORY_LOCK_KEY});", "",
    ]


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
