"""What the chatd benchmarks share: logging and percentiles, the machine
description, the database server (a throwaway cluster at default durability,
or CHATD_BENCH_DATABASE_URL / DATABASE_URL), and the fixture (organization,
provider, model) each benchmark creates its users in."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb

from chatd import migrate
from chatd.localpg import LocalCluster
from chatd.protocol import names

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
MARK = "/* chatd-bench */ "  # tags the bench's own monitoring statements

CLUSTER_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "max_connections": "200",
    "shared_buffers": "256MB",
    "pg_stat_statements.track": "top",
    # LISTEN/UNLISTEN "chatd_chat_<uuid>" are one entry per channel
    "pg_stat_statements.max": "50000",
    # commit time of send_message, for the pickup latency
    "track_commit_timestamp": "on",
    # durability stays at the defaults: fsync, synchronous_commit and
    # full_page_writes are on
}
REPORTED_SETTINGS = (
    "server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
    "wal_sync_method", "wal_buffers", "max_wal_size", "commit_delay", "shared_buffers",
    "max_connections", "checkpoint_timeout", "track_commit_timestamp",
)


# --------------------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def dist_ms(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p95_ms": round(pct(ms, 95), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else float("nan"),
    }


def text(value: str) -> Jsonb:
    return Jsonb([{"type": "text", "text": value}])


def with_db(dsn: str, dbname: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb: float | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "psycopg_pool": psycopg_pool.__version__,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- database


@dataclass
class Server:
    """Where the bench runs: its own cluster or a given server."""

    admin_dsn: str
    cluster: LocalCluster | None = None
    created: list[str] = field(default_factory=list)
    scratch_dirs: list[Path] = field(default_factory=list)

    @classmethod
    def start(cls) -> Server:
        given = os.environ.get("CHATD_BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL")
        if given:
            log(f"using the given server {migrate.redact(given)}")
            return cls(given)
        cluster = LocalCluster.create(settings=CLUSTER_SETTINGS).start()
        log(f"started a throwaway cluster on port {cluster.port} ({cluster.directory})")
        return cls(cluster.dsn("postgres"), cluster)

    def scratch(self) -> str:
        """A directory for temporary files, readable by pgbench."""
        path = Path(tempfile.mkdtemp(prefix="chatd-bench-"))
        self.scratch_dirs.append(path)
        return str(path)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return with_db(self.admin_dsn, name)

    def stop(self) -> None:
        for path in self.scratch_dirs:
            shutil.rmtree(path, ignore_errors=True)
        if self.cluster is not None:
            self.cluster.stop()
            return
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_settings(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {
            name: str(conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in REPORTED_SETTINGS
        }


@dataclass
class Fixture:
    org: uuid.UUID
    model: uuid.UUID


def setup_fixture(dsn: str) -> Fixture:
    with psycopg.connect(dsn, autocommit=True) as conn:
        org = conn.execute(
            "INSERT INTO chatd.organizations (name) VALUES ('bench') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        provider = conn.execute(
            "INSERT INTO chatd.providers (name, kind, base_url) "
            "VALUES ('bench', 'openai-compat', 'http://127.0.0.1:9/v1') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        model = conn.execute(
            "INSERT INTO chatd.model_configs (provider_id, model, display_name, context_limit, "
            "max_output_tokens, input_price_per_mtok, output_price_per_mtok) "
            "VALUES (%s, 'bench-model', 'Bench', 128000, 1024, 1, 2) RETURNING id",
            (provider,),
        ).fetchone()[0]  # type: ignore[index]
    return Fixture(org, model)


def new_user(dsn: str, fixture: Fixture, name: str) -> uuid.UUID:
    with psycopg.connect(dsn, autocommit=True) as conn:
        user: uuid.UUID = conn.execute(
            "INSERT INTO chatd.users (username) VALUES (%s) RETURNING id", (name,)
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO chatd.organization_members (organization_id, user_id) VALUES (%s, %s)",
            (fixture.org, user),
        )
    return user


def user_channel(user: uuid.UUID) -> str:
    return names.user_channel(user)
