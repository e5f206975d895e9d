"""How the worker reports the database: `Outage` (a run of transient
failures logged once when it starts and once when it ends) and
`WorkerFatal` (what retrying cannot fix)."""

from __future__ import annotations

import logging
import re
import time

from chatd.logs import reason

__all__ = ["Outage", "WorkerFatal"]

log = logging.getLogger("chatd.worker")


class WorkerFatal(RuntimeError):
    """A condition the worker cannot recover from by retrying; ``unreachable``
    when the database refused the connection or login."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Outage:
    """Transient database failures (connection errors, timeouts, cancelled
    statements), logged as one WARNING when they start and one INFO when a
    call succeeds again; each failing call itself is a debug line."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.failures = 0

    def failed(self, query: str, exc: BaseException) -> None:
        self.failures += 1
        match = re.search(r"chatd\.(\w+)", query)
        what = match.group(1) if match else "a statement"
        if self.since is None:
            self.since = time.monotonic()
            log.warning("database calls failing (%s: %s); retrying quietly until they succeed",
                        what, reason(exc))
        else:
            log.debug("%s failed: %s", what, reason(exc))

    def ok(self) -> None:
        if self.since is not None:
            log.info("database calls succeed again after %.1fs (%d failed)",
                     time.monotonic() - self.since, self.failures)
            self.since, self.failures = None, 0
