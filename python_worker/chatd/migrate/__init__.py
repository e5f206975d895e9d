"""The chatd migrator: run-once versioned migrations plus repeatable SQL.

Two kinds of SQL live in the repository:

* ``migrations/NNNN_name.up.sql`` / ``NNNN_name.down.sql``: versioned schema
  changes, applied once each, in order, each in its own transaction (one
  whose first line is ``-- chatd:no-transaction`` statement by statement
  outside any, for CREATE INDEX CONCURRENTLY), and recorded in the ledger ``chatd_meta.migrations`` with the SHA-256 of the up
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

Here: `sources` (finding and reading the files), `runner` (apply, down,
status, the ledger and its lock), `steps` (one file's run: statements,
lock_timeout, with or without a transaction), `plan` (the plan as SQL), `export` (the
plan as Flyway-style numbered files, for teams whose own migrator owns the
database). The `chatd
migrate` command is chatd.cli.migrate. May import psycopg and sqlparse only.
"""

from chatd.migrate.export import export_flyway
from chatd.migrate.plan import plan_sql
from chatd.migrate.runner import (
    ApplyResult,
    StatusRow,
    apply,
    connect,
    down,
    redact,
    split_statements,
    status,
)
from chatd.migrate.sources import (
    ADVISORY_LOCK_KEY,
    DEFAULT_LOCK_TIMEOUT,
    NO_TRANSACTION_MARKER,
    DatabaseUnreachable,
    DriftError,
    MigrationError,
    MigrationFailed,
    Sources,
    find_sql_root,
    load_sources,
)

__all__ = [
    "ADVISORY_LOCK_KEY",
    "DEFAULT_LOCK_TIMEOUT",
    "NO_TRANSACTION_MARKER",
    "ApplyResult",
    "DatabaseUnreachable",
    "DriftError",
    "MigrationError",
    "MigrationFailed",
    "Sources",
    "StatusRow",
    "apply",
    "connect",
    "down",
    "export_flyway",
    "find_sql_root",
    "load_sources",
    "plan_sql",
    "redact",
    "split_statements",
    "status",
]
