"""`export_flyway`: the migrations as plain numbered files another migrator
runs (Flyway's layout: ``V<n>__<name>.sql``, ``R__<name>.sql``), for teams
whose own migrator owns the database. Reads files only; never connects.

* ``V<n>__<name>.sql``: the up file, after one ``SET LOCAL lock_timeout``
  line (Flyway runs each versioned file in one transaction). A migration
  whose first line is ``-- chatd:no-transaction`` is copied byte for byte,
  with a ``.sql.conf`` beside it saying ``executeInTransaction=false``.
* ``R__chatd_definitions.sql``: every ``sql/`` file in order, as one
  repeatable migration; its header names the latest migration version, so
  its checksum changes with every new migration and Flyway re-runs it then
  (chatd re-applies the definitions after any migration: a new table must
  get its grants).
"""

from __future__ import annotations

from pathlib import Path

from psycopg import sql as pgsql

from chatd import __version__
from chatd.migrate.sources import (
    DEFAULT_LOCK_TIMEOUT,
    Migration,
    MigrationError,
    Sources,
    load_sources,
    no_transaction,
)

__all__ = ["REPEATABLE_FILE", "export_flyway", "flyway_file"]

REPEATABLE_FILE = "R__chatd_definitions.sql"


def flyway_file(migration: Migration, lock_timeout: str | None = DEFAULT_LOCK_TIMEOUT) -> str:
    """The text of ``V<n>__<name>.sql`` for one migration."""
    text = migration.up_sql
    if no_transaction(text) or not lock_timeout:
        return text
    literal = pgsql.Literal(lock_timeout).as_string(None)
    return (
        f"-- chatd {__version__}: migration {migration.label}\n"
        f"SET LOCAL lock_timeout = {literal};\n{text}"
    )


def export_flyway(
    directory: Path,
    *,
    only: int | None = None,
    sources: Sources | None = None,
    lock_timeout: str | None = DEFAULT_LOCK_TIMEOUT,
) -> list[Path]:
    """Write the whole plan (or migration ``only``) into ``directory``;
    returns the files written, in the order they apply."""
    sources = sources or load_sources()
    migrations = list(sources.migrations)
    if only is not None:
        found = sources.migration(only)
        if found is None:
            raise MigrationError(f"no migration {only:04d} (latest is {sources.latest:04d})")
        migrations = [found]
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for migration in migrations:
        path = directory / f"V{migration.version}__{migration.name}.sql"
        path.write_text(flyway_file(migration, lock_timeout), encoding="utf-8")
        written.append(path)
        if no_transaction(migration.up_sql):
            conf = path.with_name(path.name + ".conf")
            conf.write_text("executeInTransaction=false\n", encoding="utf-8")
            written.append(conf)
    if only is None:
        path = directory / REPEATABLE_FILE
        parts = [
            f"-- chatd {__version__}: the repeatable definitions of sql/, for schema version "
            f"{sources.latest:04d}; re-run as a whole after any migration\n"
        ]
        parts += [f"-- sql/{r.name}\n{r.sql.rstrip()}\n" for r in sources.repeatables]
        path.write_text("\n".join(parts), encoding="utf-8")
        written.append(path)
    return written
