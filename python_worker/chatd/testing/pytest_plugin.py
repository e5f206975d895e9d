"""pytest fixtures over chatd.testing.harness, for chatd's tests and yours.

Enable it in your root conftest.py with
``pytest_plugins = ["chatd.testing.pytest_plugin"]``; override
``chatd_sql_fixtures`` to run your own SQL files in the template database.

- ``pg``: the session's DatabaseServer (see chatd.testing.harness);
- ``template_db``: name of the migrated template database;
- ``db``: DSN of a fresh database cloned from the template, per test;
- ``conn``: an autocommit psycopg connection to ``db``;
- ``factory``: a chatd.testing.Factory over ``conn``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from chatd.testing.harness import (
    DatabaseServer,
    Factory,
    HarnessError,
    build_template,
    fresh_database,
    start_server,
)

__all__ = ["chatd_sql_fixtures", "conn", "db", "factory", "pg", "template_db"]

# Where the session's database came from, printed in the terminal summary.
SESSION_SERVER: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SESSION_SERVER:
        terminalreporter.write_line(f"test database: {SESSION_SERVER[0]}")


@pytest.fixture(scope="session")
def chatd_sql_fixtures() -> list[Path]:
    """SQL files run once in the template database after the migrations."""
    return []


@pytest.fixture(scope="session")
def pg() -> Iterator[DatabaseServer]:
    try:
        server = start_server()
    except HarnessError as exc:
        pytest.exit(f"chatd test harness: {exc}", returncode=3)
    SESSION_SERVER[:] = [f"{server.source} {server.note}".strip()]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def template_db(pg: DatabaseServer, chatd_sql_fixtures: list[Path]) -> str:
    return build_template(pg, fixtures=chatd_sql_fixtures)


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
