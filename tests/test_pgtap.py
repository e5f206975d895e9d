"""Runs every pgTAP file under tests/sql/ with pg_prove, each against its own
fresh database cloned from the migrated template. A failing assertion, a
plan mismatch or an SQL error fails the test; the assertion counts are
summed and printed at the end of the session."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from chatd.testing import PGTAP_ASSERTIONS, DatabaseServer, fresh_database

SQL_DIR = Path(__file__).parent / "sql"
PGTAP_FILES = sorted(p for p in SQL_DIR.glob("*.sql") if not p.name.startswith("_"))

def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pgtap_file" in metafunc.fixturenames:
        metafunc.parametrize("pgtap_file", PGTAP_FILES, ids=[p.stem for p in PGTAP_FILES])


def test_pgtap_file_passes(pg: DatabaseServer, template_db: str, pgtap_file: Path) -> None:
    pg_prove = shutil.which("pg_prove")
    if pg_prove is None:
        pytest.fail(
            "pg_prove is not installed: apt-get install libtap-parser-sourcehandler-pgtap-perl "
            "(`make setup` does this as root)"
        )
    with fresh_database(pg, template_db) as dsn:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        env = {
            **os.environ,
            "PGHOST": str(params.get("host", "")),
            "PGPORT": str(params.get("port", "5432")),
            "PGUSER": str(params.get("user", "")),
            "PGDATABASE": str(params["dbname"]),
        }
        if params.get("password"):
            env["PGPASSWORD"] = str(params["password"])
        result = subprocess.run(
            [pg_prove, "--verbose", "--ext", ".sql", str(pgtap_file)],
            capture_output=True, text=True, env=env, timeout=300, check=False,
        )
    output = result.stdout + result.stderr
    match = re.search(r"Files=\d+, Tests=(\d+)", output)
    if result.returncode != 0 or "All tests successful" not in output or match is None:
        pytest.fail(f"pgTAP failures in {pgtap_file.name}:\n{output}", pytrace=False)
    PGTAP_ASSERTIONS[pgtap_file.name] = int(match.group(1))
