"""Worker settings: every one a flag and a CHATD_* environment variable.

Precedence: command-line flag, then environment variable, then default.
`chatd worker --help` prints this table (chatd.cli.worker turns it into
flags); the README repeats it.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["OPTIONS", "Option", "WorkerConfig", "config_from_args"]


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class Option:
    name: str
    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def is_flag(self) -> bool:
        """A boolean setting: a flag without a value on the command line."""
        return self.parse is _bool


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


OPTIONS: tuple[Option, ...] = (
    Option("database_url", "DATABASE_URL", str, None,
           "PostgreSQL URL of the chatd database (required; CHATD_DATABASE_URL also works)"),
    Option("worker_id", "CHATD_WORKER_ID", str, None,
           "name of this worker in chats.worker_id (default: hostname:pid)"),
    Option("max_chats", "CHATD_MAX_CHATS", int, 10,
           "turns run at once; the worker claims only what fits"),
    Option("poll_interval", "CHATD_POLL_INTERVAL", float, 1.0,
           "seconds between claim polls when no notification arrives"),
    Option("heartbeat_interval", "CHATD_HEARTBEAT_INTERVAL", float, None,
           "seconds between batched heartbeats (default: chatd.settings.heartbeat_interval)"),
    Option("recover_interval", "CHATD_RECOVER_INTERVAL", float, 10.0,
           "seconds between recover_stale_chats() calls"),
    Option("janitor_interval", "CHATD_JANITOR_INTERVAL", float, 60.0,
           "seconds between janitor() calls (drops stream parts of ended turns)"),
    Option("shutdown_grace", "CHATD_SHUTDOWN_GRACE", float, 30.0,
           "seconds from SIGTERM to exit: in-flight turns may finish until a quarter of it "
           "(at most db_timeout) is left, then the rest are released"),
    Option("flush_interval", "CHATD_FLUSH_INTERVAL", float, 0.05,
           "seconds between streamed-part flushes (publish_parts) of one turn"),
    Option("flush_bytes", "CHATD_FLUSH_BYTES", int, 4096,
           "flush streamed parts early once this many bytes are buffered"),
    Option("idle_timeout", "CHATD_IDLE_TIMEOUT", float, 60.0,
           "seconds a provider stream may send nothing between two chunks before the "
           "turn fails with a retryable timeout"),
    Option("db_timeout", "CHATD_DB_TIMEOUT", float, 5.0,
           "seconds any database call may take before it is abandoned"),
    Option("pool_size", "CHATD_POOL_SIZE", int, 10,
           "connections in the query pool (the LISTEN connection is extra)"),
    Option("passive", "CHATD_PASSIVE", _bool, False,
           "run heartbeat, recovery and janitor, but claim no chats"),
    Option("poll_only", "CHATD_POLL_ONLY", _bool, False,
           "no LISTEN connection and no server-side prepared statements (for PgBouncer in transaction mode); poll only"),
    Option("log_level", "CHATD_LOG_LEVEL", str, "info", "how much to log",
           ("debug", "info", "warning", "error")),
    Option("log_format", "CHATD_LOG_FORMAT", str, "text", "text, or json: one object per line",
           ("text", "json")),
    Option("metrics_port", "CHATD_METRICS_PORT", int, None,
           "serve Prometheus metrics on METRICS_HOST:PORT/metrics, with /healthz and "
           "/readyz (default: off)"),
    Option("metrics_host", "CHATD_METRICS_HOST", str, "127.0.0.1", "address for the metrics server"),
)


@dataclass(frozen=True)
class WorkerConfig:
    database_url: str
    worker_id: str
    max_chats: int = 10
    poll_interval: float = 1.0
    heartbeat_interval: float | None = None
    recover_interval: float = 10.0
    janitor_interval: float = 60.0
    shutdown_grace: float = 30.0
    flush_interval: float = 0.05
    flush_bytes: int = 4096
    idle_timeout: float = 60.0
    db_timeout: float = 5.0
    pool_size: int = 10
    passive: bool = False
    poll_only: bool = False
    log_level: str = "info"
    log_format: str = "text"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.max_chats < 1:
            raise ValueError("max_chats must be at least 1")
        for name in ("poll_interval", "recover_interval", "janitor_interval", "flush_interval",
                     "db_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.heartbeat_interval is not None and self.heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if self.log_format not in ("text", "json"):
            raise ValueError("log_format must be text or json")


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> WorkerConfig:
    """Flags over environment over defaults; raises ValueError naming the setting."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.name, None)
        if value is None:
            raw = environ.get(option.env)
            if raw is None and option.name == "database_url":
                raw = environ.get("CHATD_DATABASE_URL")
            if raw not in (None, ""):
                try:
                    value = option.parse(raw)
                except ValueError as exc:
                    raise ValueError(f"{option.env}={raw!r}: {exc}") from exc
        values[option.name] = option.default if value is None else value
    if not values["database_url"]:
        raise ValueError("no database: set DATABASE_URL or pass --database-url")
    values["worker_id"] = values["worker_id"] or _default_worker_id()
    known = {f.name for f in fields(WorkerConfig)}
    return WorkerConfig(**{k: v for k, v in values.items() if k in known})
