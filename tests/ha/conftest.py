"""The failover tests (``make test-ha``): a pg_auto_failover formation of
their own, outside ``make test`` (they need the pg_auto_failover packages and
take about a minute)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent / "python")]
