"""A pg_auto_failover formation on 127.0.0.1 for the failover tests.

A monitor and two PostgreSQL nodes (a primary and a synchronous standby), each
a detached ``pg_autoctl run`` in its own session, run as the ``postgres`` OS
user (via runuser when the tests run as root). The monitor's health checks are
shortened for the test (a dead primary is replaced in seconds, not ~50 s) and
the keepers' network-partition timeout is shortened with them, so that a
primary cut off from the monitor demotes itself before the monitor promotes
its standby (the guard against two primaries). Test-only settings: production
keeps the defaults or tunes both sides together.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")

# monitor side (milliseconds): detect a dead node in ~3 s
MONITOR_SETTINGS = {
    "pgautofailover.health_check_period": "1000",
    "pgautofailover.health_check_timeout": "1000",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "500",
    "pgautofailover.node_considered_unhealthy_timeout": "3000",
    "pgautofailover.primary_demote_timeout": "5000",
    "pgautofailover.startup_grace_period": "2000",
}
# keeper side (seconds): a primary that sees neither monitor nor standby for
# this long demotes itself; must stay below node_considered_unhealthy_timeout
KEEPER_SETTINGS = {"timeout.network_partition_timeout": "2"}


class FormationError(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    name: str
    pgdata: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


@dataclass
class Formation:
    root: Path
    dbname: str = "chatd"
    monitor: Node | None = None
    nodes: list[Node] = field(default_factory=list)

    # ---------------------------------------------------------------- commands

    def _env(self) -> dict[str, str]:
        return {
            "PATH": f"{PG_BIN}:/usr/bin:/bin",
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "XDG_DATA_HOME": str(self.root / "data"),
            "PG_CONFIG": str(PG_BIN / "pg_config"),
        }

    def _command(self, *args: str) -> list[str]:
        env = [f"{k}={v}" for k, v in self._env().items()]
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return [*prefix, "env", *env, "pg_autoctl", *args]

    def autoctl(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(self._command(*args), capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise FormationError(f"pg_autoctl {' '.join(args)} failed: {result.stderr.decode()[-2000:]}")
        return result.stdout.decode()

    def _run_detached(self, node: Node) -> None:
        with open(self.root / f"{node.name}.log", "ab") as log:  # the child keeps its own copy
            node.process = subprocess.Popen(
                self._command("run", "--pgdata", str(node.pgdata)),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def create(cls) -> Formation:
        root = Path(tempfile.mkdtemp(prefix="chatd-ha-"))
        os.chmod(root, 0o777)
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        formation = cls(root)
        try:
            formation._start()
        except BaseException:
            formation.destroy()
            raise
        return formation

    def _start(self) -> None:
        self.monitor = Node("monitor", self.root / "monitor", _free_port())
        self.autoctl(
            "create", "monitor", "--pgdata", str(self.monitor.pgdata), "--pgport", str(self.monitor.port),
            "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl", "--pgctl", str(PG_BIN / "pg_ctl"),
        )
        self._run_detached(self.monitor)
        self._wait(lambda: self._monitor_answers(), 30, "the monitor to accept connections")
        with psycopg.connect(self.monitor_admin_dsn, autocommit=True) as conn:
            for name, value in MONITOR_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
        for index in (1, 2):
            node = Node(f"node{index}", self.root / f"node{index}", _free_port())
            self.autoctl(
                "create", "postgres", "--pgdata", str(node.pgdata), "--pgport", str(node.port),
                "--hostname", "127.0.0.1", "--name", node.name, "--monitor", self.monitor_uri,
                "--auth", "trust", "--no-ssl", "--dbname", self.dbname, "--pgctl", str(PG_BIN / "pg_ctl"),
            )
            for key, value in KEEPER_SETTINGS.items():
                self.autoctl("config", "set", "--pgdata", str(node.pgdata), key, value)
            self._run_detached(node)
            self.nodes.append(node)
            if index == 1:
                self.wait_states({"node1": "single"}, 60)
        self.wait_states({"node1": "primary", "node2": "secondary"}, 90)

    def destroy(self) -> None:
        for node in [*self.nodes, *([self.monitor] if self.monitor else [])]:
            self.kill(node)
        shutil.rmtree(self.root, ignore_errors=True)

    def kill(self, node: Node) -> None:
        """SIGKILL the node's keeper and its postmaster: the server is gone."""
        if node.process is not None and node.process.poll() is None:
            try:
                os.killpg(node.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.process.wait(10)
        pid = node.postmaster_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restart(self, node: Node) -> None:
        """Start a killed node again (its keeper rejoins it as a standby)."""
        self._run_detached(node)

    # ---------------------------------------------------------------- state

    @property
    def monitor_uri(self) -> str:
        assert self.monitor is not None
        return f"postgres://autoctl_node@127.0.0.1:{self.monitor.port}/pg_auto_failover?sslmode=disable"

    @property
    def monitor_admin_dsn(self) -> str:
        assert self.monitor is not None
        return f"host=127.0.0.1 port={self.monitor.port} dbname=pg_auto_failover user=postgres"

    def dsn(self, **extra: str) -> str:
        """The multi-host connection string every chatd component gets."""
        hosts = ",".join("127.0.0.1" for _ in self.nodes)
        ports = ",".join(str(n.port) for n in self.nodes)
        params = {"host": hosts, "port": ports, "dbname": self.dbname, "user": "postgres",
                  "target_session_attrs": "read-write", "connect_timeout": "2", **extra}
        return " ".join(f"{k}={v}" for k, v in params.items())

    def node_dsn(self, node: Node) -> str:
        return f"host=127.0.0.1 port={node.port} dbname={self.dbname} user=postgres connect_timeout=2"

    def _monitor_answers(self) -> bool:
        try:
            psycopg.connect(self.monitor_admin_dsn, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def states(self) -> dict[str, tuple[str, str]]:
        """node name -> (reported state, goal state), from the monitor."""
        with psycopg.connect(self.monitor_admin_dsn, connect_timeout=2) as conn:
            rows = conn.execute(
                "SELECT nodename, reportedstate::text, goalstate::text FROM pgautofailover.node"
            ).fetchall()
        return {name: (reported, goal) for name, reported, goal in rows}

    def primary(self) -> Node:
        """The node the monitor has made primary and that reported it (a dead
        primary keeps its last reported state, with another goal state)."""
        states = self.states()
        [node] = [n for n in self.nodes
                  if states.get(n.name, ("", ""))[1] in ("primary", "single", "wait_primary")
                  and states[n.name][0] == states[n.name][1]]
        return node

    def wait_states(self, wanted: dict[str, str], timeout: float) -> None:
        def reached() -> bool:
            try:
                states = self.states()
            except psycopg.OperationalError:
                return False
            return all(states.get(name) == (state, state) for name, state in wanted.items())
        self._wait(reached, timeout, f"states {wanted}")

    def _wait(self, condition: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise FormationError(f"timed out after {timeout}s waiting for {what}: {self._log_tail()}")
            time.sleep(0.1)

    def _log_tail(self) -> str:
        tails = []
        for log in sorted(self.root.glob("*.log")):
            tails.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(tails)

    def perform_failover(self) -> None:
        assert self.monitor is not None
        self.autoctl("perform", "failover", "--pgdata", str(self.monitor.pgdata), "--wait", "60")
