"""plpgsql_check over every plpgsql function chatd installs: zero errors,
zero warnings. sqlfluff cannot see inside $$ bodies; this can."""

from __future__ import annotations

import re
from typing import Any

import psycopg

CHECKED_SCHEMAS = ("chatd", "chatd_test")


def test_every_plpgsql_function_passes_plpgsql_check(conn: psycopg.Connection[Any]) -> None:
    functions = conn.execute(
        """
        SELECT p.oid::regprocedure::text,
               p.oid,
               p.prorettype = 'trigger'::regtype AS is_trigger,
               (SELECT t.tgrelid FROM pg_trigger AS t WHERE t.tgfoid = p.oid LIMIT 1) AS relid
        FROM pg_proc AS p
        JOIN pg_namespace AS n ON n.oid = p.pronamespace
        JOIN pg_language AS l ON l.oid = p.prolang
        WHERE n.nspname = ANY(%s) AND l.lanname = 'plpgsql'
        ORDER BY 1
        """,
        (list(CHECKED_SCHEMAS),),
    ).fetchall()
    assert functions, "no plpgsql functions found: the check would be vacuous"
    findings = []
    for name, oid, is_trigger, relid in functions:
        if is_trigger and relid is None:
            findings.append(f"{name}: trigger function attached to no table, cannot be checked")
            continue
        rows = conn.execute(
            """
            SELECT level, message, lineno, statement
            FROM plpgsql_check_function_tb(
                %s, coalesce(%s, 0)::regclass,
                fatal_errors => FALSE, other_warnings => TRUE,
                extra_warnings => TRUE, performance_warnings => FALSE,
                security_warnings => TRUE
            )
            """,
            (oid, relid),
        ).fetchall()
        findings += [f"{name} line {lineno} ({statement}): {level}: {message}" for level, message, lineno, statement in rows]
    assert findings == [], "plpgsql_check findings:\n" + "\n".join(findings)


# The columns chatd._turn_reset owns: every UPDATE that takes a chat's turn
# columns from it must write all of them (a column left out would silently
# keep its old value, e.g. a stale worker_id or retry_state).
TURN_COLUMNS = (
    "status", "worker_id", "heartbeat_at", "lease", "attempt", "recoveries", "retry_state", "last_error",
    "next_attempt_at", "interrupted_lease", "interrupted_model_config_id", "interrupted_last_message_id",
    "model_config_id",
)


def test_every_turn_reset_update_writes_every_turn_column(conn: psycopg.Connection[Any]) -> None:
    bodies = conn.execute(
        """
        SELECT p.oid::regprocedure::text, p.prosrc
        FROM pg_proc AS p
        WHERE p.pronamespace = 'chatd'::regnamespace AND p.proname <> '_turn_reset'
            AND p.prosrc LIKE '%%chatd._turn_reset(%%'
        ORDER BY 1
        """
    ).fetchall()
    full_update = re.compile(
        r"\(\s*" + r",\s*".join(TURN_COLUMNS) + r"\s*\)\s*=\s*\(\s*SELECT\s+"
        + r",\s*".join(f"r\\.{c}" for c in TURN_COLUMNS) + r"\s+FROM chatd\._turn_reset\("
    )
    calls = {name: src.count("chatd._turn_reset(") for name, src in bodies}
    assert sum(calls.values()) >= 10, f"expected every turn exit to use chatd._turn_reset, found {calls}"
    partial = {name: n for name, src in bodies if (n := calls[name]) != len(full_update.findall(src))}
    assert partial == {}, f"UPDATEs through chatd._turn_reset that do not write every turn column: {partial}"
