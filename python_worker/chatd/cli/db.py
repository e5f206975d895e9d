"""`chatd db start|stop|url`: a throwaway local cluster that outlives the command.

The cluster's location is kept in a small JSON state file (default
``.chatd/db.json``) so `chatd db stop` can find and remove it later.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import psycopg

from chatd.cli.common import Exit
from chatd.localpg import LocalCluster, PostgresNotFound

EXAMPLE = """export DATABASE_URL=$(chatd db start)
chatd db stop"""

DEFAULT_STATE = Path(".chatd/db.json")
DATABASE = "chatd"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "url"],
                        help="start a cluster and print its URL, stop and remove it, "
                        "or print the URL of the running one")
    parser.add_argument("--state-file", type=Path, default=DEFAULT_STATE,
                        help=f"where the running cluster is recorded (default {DEFAULT_STATE})")


def _load(state_file: Path) -> LocalCluster | None:
    if not state_file.exists():
        return None
    data = json.loads(state_file.read_text())
    return LocalCluster(
        directory=Path(data["directory"]), port=int(data["port"]), bin_dir=Path(data["bin_dir"]),
        run_as=data["run_as"], settings={},
    )


def run(args: argparse.Namespace) -> int:
    state_file: Path = args.state_file
    existing = _load(state_file)
    if args.action == "stop":
        if existing is None:
            print("no throwaway cluster is recorded", file=sys.stderr)
            return 0
        existing.stop()
        state_file.unlink()
        print(f"stopped and removed {existing.directory}", file=sys.stderr)
        return 0
    if existing is not None and existing.data_dir.exists():
        print(existing.dsn(DATABASE))
        return 0
    if args.action == "url":
        print("no throwaway cluster is running; `chatd db start` starts one", file=sys.stderr)
        return 1
    try:
        cluster = LocalCluster.create().start()
    except PostgresNotFound as exc:
        print(f"chatd db: {exc}", file=sys.stderr)
        return Exit.FAILED
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({
        "directory": str(cluster.directory), "port": cluster.port,
        "bin_dir": str(cluster.bin_dir), "run_as": cluster.run_as,
    }))
    print(cluster.dsn(DATABASE))
    return 0
