"""A throwaway local PostgreSQL cluster, started from the server binaries.

Used by the test harness, `make db` and `make demo` when no DATABASE_URL is
given. The cluster lives in a temporary directory, listens only on a Unix
socket in that directory plus 127.0.0.1 on a free port, trusts local
connections, and is deleted on stop. PostgreSQL refuses to run as root, so as
root the cluster is owned by and run as the `postgres` OS user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalCluster", "PostgresNotFound", "find_pg_bin"]


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries could be found on this machine."""


def find_pg_bin() -> Path:
    """Directory holding `initdb` and `pg_ctl`: CHATD_PG_BIN, PATH, or the
    newest /usr/lib/postgresql/*/bin."""
    explicit = os.environ.get("CHATD_PG_BIN")
    if explicit:
        if (Path(explicit) / "initdb").exists():
            return Path(explicit)
        raise PostgresNotFound(f"CHATD_PG_BIN={explicit} holds no initdb")
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    raise PostgresNotFound(
        "no PostgreSQL server binaries found (initdb not on PATH nor in "
        "/usr/lib/postgresql/*/bin). Install them (Debian: apt-get install "
        "postgresql-15 postgresql-15-pgtap postgresql-15-plpgsql-check), set "
        "CHATD_PG_BIN, or point CHATD_TEST_DATABASE_URL / DATABASE_URL at a "
        "running server."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalCluster:
    """A PostgreSQL cluster in a temporary directory.

    `start()` runs initdb and pg_ctl start; `stop()` stops it and removes the
    directory. Usable as a context manager.
    """

    directory: Path
    port: int
    bin_dir: Path
    run_as: str | None
    settings: dict[str, str]

    @classmethod
    def create(
        cls, *, port: int | None = None, settings: dict[str, str] | None = None
    ) -> LocalCluster:
        bin_dir = find_pg_bin()
        run_as = "postgres" if os.geteuid() == 0 else None
        directory = Path(tempfile.mkdtemp(prefix="chatd-pg-"))
        if run_as:
            pw = pwd.getpwnam(run_as)
            os.chown(directory, pw.pw_uid, pw.pw_gid)
        return cls(
            directory=directory,
            port=port or _free_port(),
            bin_dir=bin_dir,
            run_as=run_as,
            settings=dict(settings or {}),
        )

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory

    @property
    def user(self) -> str:
        return self.run_as or pwd.getpwuid(os.geteuid()).pw_name

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    def _check(self, what: str, result: subprocess.CompletedProcess[str]) -> None:
        if result.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def start(self) -> LocalCluster:
        self._check(
            "initdb",
            self._run(
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-A", "trust",
                "-E", "UTF8",
                "--locale=C",
                "-U", self.user,
                "--no-sync",
            ),
        )
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "200",
            "shared_preload_libraries": "",
            **self.settings,
        }
        with open(self.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            for key, value in options.items():
                conf.write(f"{key} = '{value}'\n")
        self._check(
            "pg_ctl start",
            self._run(
                str(self.bin_dir / "pg_ctl"),
                "-D", str(self.data_dir),
                "-l", str(self.directory / "server.log"),
                "-w", "-t", "60",
                "start",
            ),
        )
        return self

    def restart(self) -> None:
        """pg_ctl restart (fast mode): every connection is dropped."""
        self._check(
            "pg_ctl restart",
            self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
                "-l", str(self.directory / "server.log"),
                "-m", "fast", "-w", "-t", "60", "restart",
            ),
        )

    def stop(self) -> None:
        if self.data_dir.exists():
            self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
                "-m", "immediate", "-w", "stop",
            )
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
