"""Fixtures shared by every test: a real PostgreSQL, never a skip.

See chatd.testing for where the server comes from. Fixtures:

- ``pg``: the session's DatabaseServer;
- ``template_db``: name of the migrated template database;
- ``db``: DSN of a fresh database cloned from the template, per test;
- ``conn``: an autocommit psycopg connection to ``db``;
- ``factory``: chatd.testing.Factory over ``conn``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chatd.testing import (
    PGTAP_ASSERTIONS,
    DatabaseServer,
    Factory,
    HarnessError,
    build_template,
    fresh_database,
    start_server,
)


@pytest.fixture(scope="session")
def pg() -> Iterator[DatabaseServer]:
    try:
        server = start_server()
    except HarnessError as exc:
        pytest.exit(f"chatd test harness: {exc}", returncode=3)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_db(pg: DatabaseServer) -> str:
    return build_template(pg, fixtures=sorted((Path(__file__).parent / "sql").glob("_*.sql")))


@pytest.fixture
def db(pg: DatabaseServer, template_db: str) -> Iterator[str]:
    with fresh_database(pg, template_db) as dsn:
        yield dsn


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db, autocommit=True) as connection:
        yield connection


@pytest.fixture
def factory(conn: psycopg.Connection[Any]) -> Factory:
    return Factory(conn)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts = PGTAP_ASSERTIONS
    if counts:
        terminalreporter.write_line(
            f"pgTAP: {sum(counts.values())} assertions passed in {len(counts)} files"
        )
