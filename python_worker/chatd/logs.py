"""Structured logging for chatd processes: plain text or one JSON object a line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

import psycopg

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # the SDKs' HTTP clients log every request at info
    for noisy in ("httpx", "httpx2", "openai", "anthropic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # psycopg_pool warns once per failed connection attempt (dozens per
    # restart); the worker's and listener's outage lines say it once each
    if level.lower() != "debug":
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def reason(exc: BaseException) -> str:
    """What went wrong, never empty (a TimeoutError's str is)."""
    return str(exc).strip() or repr(exc)


def log_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """A failed database call: a debug line when transient (connection
    error, timeout; the worker's Outage logs the outage once), else a warning."""
    transient = isinstance(exc, (psycopg.OperationalError, TimeoutError))
    (logger.debug if transient else logger.warning)("%s failed: %s", what, reason(exc))
