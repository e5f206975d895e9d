"""The failover tests (``make test-ha``): a pg_auto_failover formation of
their own, outside ``make test`` (they need the pg_auto_failover packages and
take about a minute)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from chatd import migrate
from chatd.testing import ensure_login_roles
from chatd.testing.fakellm import FakeLLM

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "python")]

from autofailover import Formation  # noqa: E402  (tests/ha, on the path from here)
from repo_support import fixture_files  # noqa: E402


@pytest.fixture(scope="module")
def formation() -> Iterator[Formation]:
    started = time.monotonic()
    formation = Formation.create()
    print(f"formation ready in {time.monotonic() - started:.1f}s")
    try:
        dsn = formation.dsn()
        migrate.apply(dsn, log=lambda _m: None)
        ensure_login_roles(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for path in fixture_files():
                conn.execute(path.read_text().encode())
        yield formation
    finally:
        formation.destroy()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server
