"""Where chatd's own tests find the source checkout. The harness in
chatd.testing never reads it; tests that need repository files (docs, SQL
fixtures, migrations) take them from here."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SQL_TESTS = REPO_ROOT / "tests" / "sql"


def fixture_files() -> list[Path]:
    """The SQL fixture factories every test database gets (tests/sql/_*.sql)."""
    return sorted(SQL_TESTS.glob("_*.sql"))
