"""plpgsql_check over every plpgsql function chatd installs: zero errors,
zero warnings. sqlfluff cannot see inside $$ bodies; this can."""

from __future__ import annotations

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
