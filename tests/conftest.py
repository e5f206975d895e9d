"""Fixtures shared by every test: a real PostgreSQL, never a skip.

The fixtures (``pg``, ``template_db``, ``db``, ``conn``, ``factory``) come
from chatd.testing.pytest_plugin, the same ones users' suites get; see
chatd.testing.harness for where the server comes from. chatd's own SQL
fixture factories (tests/sql/_*.sql) are handed to it here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from chatd.testing import PGTAP_ASSERTIONS

pytest_plugins = ["chatd.testing.pytest_plugin"]


@pytest.fixture(scope="session")
def chatd_sql_fixtures() -> list[Path]:
    return sorted((Path(__file__).parent / "sql").glob("_*.sql"))


def pytest_ignore_collect(collection_path: Path, config: Any) -> bool | None:
    """tests/ha (the failover tests) runs only through `make test-ha`
    (CHATD_TEST_HA=1): it needs pg_auto_failover and a minute of its own."""
    if collection_path.name == "ha" and collection_path.parent == Path(__file__).parent:
        return os.environ.get("CHATD_TEST_HA") != "1"
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts = PGTAP_ASSERTIONS
    if counts:
        terminalreporter.write_line(
            f"pgTAP: {sum(counts.values())} assertions passed in {len(counts)} files"
        )
