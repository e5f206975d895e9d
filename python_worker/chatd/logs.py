"""Structured logging for chatd processes: plain text or one JSON object a line.

`bind(chat_id=..., lease=...)` adds fields to every record logged later in
the current asyncio task (and the tasks it creates): the worker binds
``worker_id``, each turn ``chat_id``, ``lease`` and ``provider``; a failure
line adds ``error_kind`` itself. JSON lines carry them as fields.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TextIO

import psycopg

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_FIELDS: ContextVar[dict[str, object] | None] = ContextVar("chatd_log_fields", default=None)


def bind(**fields: object) -> None:
    """Add fields to the records of this task from now on (and of the tasks
    it creates later)."""
    _FIELDS.set({**(_FIELDS.get() or {}), **fields})


class ContextFields(logging.Filter):
    """Copies the bound fields onto each record (an explicit extra wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_FIELDS.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


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


def make_handler(fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """A handler in ``fmt`` (text or json) that adds the bound fields."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ContextFields())
    return handler


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = make_handler(fmt)
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
