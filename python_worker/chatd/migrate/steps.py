"""Running one migration file: statement splitting (so a failure names the
statement and its line), the per-step lock_timeout, and `run_step`, which
applies a file with its ledger write in one transaction, or outside any
transaction for a file marked ``-- chatd:no-transaction``."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlparse
from psycopg.rows import TupleRow

from chatd.migrate.sources import MigrationError, MigrationFailed, no_transaction

__all__ = ["Statement", "run_file", "run_step", "set_lock_timeout", "split_statements"]

_TRANSACTION_CONTROL = re.compile(
    r"^\s*(BEGIN|COMMIT|ROLLBACK|START\s+TRANSACTION|END)\s*;?\s*$", re.IGNORECASE
)


@dataclass(frozen=True)
class Statement:
    """One statement of a file and the line it starts on."""

    text: str
    line: int


def split_statements(text: str) -> list[Statement]:
    """Split a SQL file into statements (dollar quotes, comments and strings
    respected), each with the line it starts on."""
    statements: list[Statement] = []
    cursor = 0
    for raw in sqlparse.split(text):
        if not sqlparse.format(raw, strip_comments=True).strip():
            continue
        start = text.find(raw, cursor)
        if start < 0:  # sqlparse normalised something; fall back to the cursor
            start = cursor
        else:
            cursor = start + len(raw)
        # the line of the first non-comment token, not of a leading comment
        code = sqlparse.format(raw, strip_comments=True).strip().splitlines()[0]
        offset = raw.find(code)
        line = text.count("\n", 0, start + max(offset, 0)) + 1
        statements.append(Statement(raw, line))
    return statements


def _check_no_transaction_control(path: Path, statements: Sequence[Statement]) -> None:
    for stmt in statements:
        if _TRANSACTION_CONTROL.match(sqlparse.format(stmt.text, strip_comments=True)):
            raise MigrationError(
                f"{path}:{stmt.line}: transaction control is not allowed in a migration "
                "file; the migrator wraps each file in its own transaction"
            )


def _first_line(text: str) -> str:
    code = sqlparse.format(text, strip_comments=True).strip()
    first = code.splitlines()[0] if code else text.strip()
    return first if len(first) <= 120 else first[:117] + "..."


def run_file(conn: psycopg.Connection[TupleRow], path: Path, text: str, *, transactional: bool = True) -> None:
    statements = split_statements(text)
    _check_no_transaction_control(path, statements)
    for index, stmt in enumerate(statements, start=1):
        try:
            conn.execute(stmt.text.encode())
        except psycopg.Error as exc:
            diag = exc.diag
            where = f"\n  context: {diag.context}" if diag.context else ""
            hint = (
                "\n  hint: a lock it needs is held by another session (lock_timeout); "
                "retry when it ends, or pass a longer --lock-timeout"
                if diag.sqlstate == "55P03" else ""
            )
            outcome = "failed and the transaction was rolled back" if transactional else (
                "failed; the file runs outside a transaction (chatd:no-transaction), so the "
                "statements before it stay applied and the migration is not recorded"
            )
            if not transactional:
                hint += (
                    "\n  hint: every statement of such a file must be safe to run again (IF NOT "
                    "EXISTS, IF EXISTS); a failed CREATE INDEX CONCURRENTLY leaves an INVALID "
                    "index: drop it, then run the migration again"
                )
            raise MigrationFailed(
                f"{path.name}: statement {index} (line {stmt.line}) {outcome}:\n  {_first_line(stmt.text)}\n"
                f"  {diag.severity or 'ERROR'} {diag.sqlstate or ''}: "
                f"{diag.message_primary or exc}{where}{hint}"
            ) from exc


def run_step(
    conn: psycopg.Connection[TupleRow], path: Path, text: str, lock_timeout: str | None,
    record: Callable[[], None],
) -> None:
    """One migration file and its ledger write (``record``) in one
    transaction; or, for a file marked chatd:no-transaction (CREATE INDEX
    CONCURRENTLY cannot run in a transaction), its statements one by one in
    autocommit under a session-level lock_timeout, then the ledger write in
    a transaction of its own. The runner's session advisory lock covers both."""
    if not no_transaction(text):
        with conn.transaction():
            set_lock_timeout(conn, lock_timeout)
            run_file(conn, path, text)
            record()
        return
    row = conn.execute("SELECT current_setting('lock_timeout')").fetchone()
    previous = str(row[0]) if row else "0"
    set_lock_timeout(conn, lock_timeout, local=False)
    try:
        run_file(conn, path, text, transactional=False)
    finally:
        if not conn.closed and not conn.broken:
            set_lock_timeout(conn, previous, local=False)
    with conn.transaction():
        record()


def set_lock_timeout(conn: psycopg.Connection[TupleRow], lock_timeout: str | None, *, local: bool = True) -> None:
    """SET LOCAL lock_timeout for the current transaction, or with ``local``
    False for the session (None: leave it as it is)."""
    if lock_timeout:
        conn.execute("SELECT set_config('lock_timeout', %s, %s)", (lock_timeout, local))
