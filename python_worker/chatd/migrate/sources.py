"""The SQL files the migrator applies: versioned migrations and repeatable
definitions, found under $CHATD_SQL_ROOT, the source checkout, or the copy
packaged in the wheel (chatd/_sql)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

__all__ = [
    "ADVISORY_LOCK_KEY",
    "DEFAULT_LOCK_TIMEOUT",
    "NO_TRANSACTION_MARKER",
    "DatabaseUnreachable",
    "DriftError",
    "Ledger",
    "Migration",
    "MigrationError",
    "MigrationFailed",
    "Repeatable",
    "Sources",
    "find_sql_root",
    "load_sources",
    "no_transaction",
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

# Every migration step waits at most this long for a lock (SET LOCAL
# lock_timeout), so a migration queued behind a long transaction fails fast
# instead of blocking every query queued behind it. Set by the runner and by
# printed plans, never written into the files (their checksums stay).
DEFAULT_LOCK_TIMEOUT = "5s"

# First line of a migration that must run outside a transaction (CREATE INDEX
# CONCURRENTLY): applied statement by statement in autocommit, then recorded;
# printed without BEGIN/COMMIT around it and exported unchanged.
NO_TRANSACTION_MARKER = "-- chatd:no-transaction"


def no_transaction(text: str) -> bool:
    """True for a migration file whose first line is NO_TRANSACTION_MARKER:
    its statements run one by one outside any transaction."""
    return text.split("\n", 1)[0].strip() == NO_TRANSACTION_MARKER

_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(up|down)\.sql$")


class MigrationError(Exception):
    """A migration problem the operator must fix; the message says how."""


class DatabaseUnreachable(MigrationError):
    """The database cannot be reached or refused the login."""


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
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "migrations").is_dir():
        return checkout
    return Path(__file__).resolve().parents[1] / "_sql"


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
