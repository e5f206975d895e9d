"""The results as a text table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# --------------------------------------------------------------------------- report


def _header(results: dict[str, Any]) -> list[str]:
    """Machine, server settings and library versions: what the numbers ran on."""
    lines: list[str] = []
    m, s = results["machine"], results["postgres"]
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; "
                 f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end')}")
    lines.append(f"PostgreSQL {s['server_version']}: fsync={s['fsync']} "
                 f"synchronous_commit={s['synchronous_commit']} full_page_writes={s['full_page_writes']} "
                 f"shared_buffers={s['shared_buffers']} wal_sync_method={s['wal_sync_method']} "
                 f"wal_buffers={s['wal_buffers']}")
    lines.append(f"Python {m['python']}, psycopg {m['psycopg']}, psycopg_pool {m['psycopg_pool']}")
    lines.append("")
    return lines


def _pgbench_rows(
    pgbench: dict[str, Any], rounds: dict[str, Any] | None, row: Callable[..., None]
) -> float | None:
    """The ceiling (not with --only without pgbench); returns the cluster's
    CPU ms per pgbench -N transaction, when measured: the median over the
    rounds of bench/ratio.py when there are several (the first run, right
    after `pgbench -i`, also pays for the load's checkpoint)."""
    if pgbench.get("tps"):
        row("pgbench -N (simple update) tps", pgbench["tps"], "", True)
    txn_cpu: float | None = (rounds or {}).get("pgbench_cpu_ms_per_txn") or pgbench.get("server_cpu_ms_per_txn")
    if txn_cpu:
        n = len(rounds["rounds"]) if rounds else 1
        row(f"  PostgreSQL CPU ms / pgbench -N transaction{f' (median of {n})' if n > 1 else ''}",
            f"{txn_cpu:.3f}")
    notify_tps = pgbench.get("with_notify", {}).get("tps")
    if notify_tps:
        row("pgbench -N + pg_notify() tps", notify_tps, "", True)
    return txn_cpu


def _ratio_rows(rounds: dict[str, Any] | None, row: Callable[..., None]) -> None:
    """bench/ratio.py: the median ratio to pgbench -N over alternating
    rounds, the steadier figure on a noisy machine."""
    if not rounds:
        return
    n = len(rounds["rounds"])
    for procs, r in rounds["ratio_to_pgbench"].items():
        row(f"dispatch / pgbench -N, {procs} proc(s): median of {n} rounds", f"{r['median']:.1%}")
        row("  min - max over the rounds", f"{r['min']:.1%} - {r['max']:.1%}")


def table(results: dict[str, Any]) -> str:
    ceiling = results.get("pgbench", {}).get("tps") or 0.0
    lines = _header(results)
    lines.append(f"{'measurement':<52} {'value':>14} {'vs pgbench':>11}")
    lines.append("-" * 79)

    def row(name: str, value: float | str, unit: str = "", ratio: bool = False) -> None:
        shown = f"{value:,.1f}" if isinstance(value, float | int) else str(value)
        r = f"{float(value) / ceiling:.1%}" if ratio and ceiling and isinstance(value, float | int) else ""
        lines.append(f"{name:<52} {shown + unit:>14} {r:>11}")

    txn_cpu = _pgbench_rows(results.get("pgbench", {}), results.get("dispatch_rounds"), row)
    for d in results.get("dispatch", []):
        n = d["worker_processes"]
        row(f"dispatch, {n} worker proc(s): turns/s (DB window)", d["turns_per_s_db"], "", True)
        row(f"dispatch, {n} worker proc(s): turns/s (wall clock)", d["turns_per_s_wall"], "", True)
        row("  statements / turn (pg_stat_statements)", d["round_trips_per_turn"])
        row("  commits / turn (pg_stat_database)", d["xact_commits_per_turn"])
        row("  xids / turn (write transactions)", d["xids_per_turn"])
        row("  WAL bytes / turn", d["wal_bytes_per_turn"])
        row("  chats row updates / turn (of which HOT)",
            f"{d['chats_updates_per_turn']:.2f} ({d['chats_hot_updates_per_turn']:.2f})")
        row("  CPU ms / turn: workers; PostgreSQL",
            f"{d['worker_cpu_ms_per_turn']:.2f}; {d['server_cpu_ms_per_turn'] or float('nan'):.2f}")
        row("  machine CPU busy (all users)", f"{d['machine_cpu_busy']:.0%}")
        if txn_cpu and d["server_cpu_ms_per_turn"]:  # steady whatever the machine's speed
            row("  PostgreSQL CPU / turn, in pgbench -N transactions", f"{d['server_cpu_ms_per_turn'] / txn_cpu:.2f}")
    _ratio_rows(results.get("dispatch_rounds"), row)
    p = results.get("pickup", {})
    for key, label in (("listen", "pickup LISTEN"), ("poll_only", "pickup --poll-only")):
        if key in p:
            v = p[key]
            row(f"{label} (n={v['n']}) p50 / p95 ms", f"{v['p50_ms']:.2f} / {v['p95_ms']:.2f}")
            row(f"{label} p99 / max ms", f"{v['p99_ms']:.2f} / {v['max_ms']:.2f}")
            c = v["client_after_commit_returned"]
            row("  vs client clock after COMMIT: p50 / p99 ms", f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f}")
    st = results.get("streaming")
    if st:
        row(f"streaming {st['chats']} chats: parts/s", st["parts_per_s"], "", True)
        lat = st["part_latency_from_created_at"]
        row("  part latency p50 / p95 ms", f"{lat['p50_ms']:.1f} / {lat['p95_ms']:.1f}")
        row("  part latency p99 / max ms", f"{lat['p99_ms']:.1f} / {lat['max_ms']:.1f}")
        ld = st["part_latency_from_last_delta"]
        row("  from the LLM delta (incl. 50 ms coalescing) p50/p99", f"{ld['p50_ms']:.1f} / {ld['p99_ms']:.1f}")
        lines.append(f"  (subscriber: {st['subscriber']})")
    _sse_rows(results.get("sse"), row)
    _tool_rows(results.get("tool_step"), row)
    for size, v in results.get("heartbeat", {}).items():
        row(f"heartbeat() covering {size} chats: ms / WAL bytes", f"{v['ms_per_call']:.2f} / {v['wal_bytes_per_call']:.0f}")
    _growth_rows(results.get("growth"), results.get("finish_contention"), row)
    _subscriber_rows(results.get("subscribers"), row)
    _growth_table_rows(results.get("growth_table"), lines)
    _claim_window_rows(results.get("claim_window"), lines)
    return "\n".join(lines)


def _subscriber_rows(subs: dict[str, Any] | None, row: Callable[[str, str], None]) -> None:
    if not subs:
        return
    many, one = subs["many_chats"], subs["one_chat"]
    row(f"one client following {many['chats']} chats: batches received",
        f"{many['batches_received']} / {many['batches_published']}")
    row("  part latency commit -> subscriber p50 / p99 ms", f"{many['latency']['p50_ms']:.1f} / {many['latency']['p99_ms']:.1f}")
    row(f"{one['subscribers']} subscribers on one chat: deliveries", f"{one['deliveries']} / {one['subscribers'] * one['batches']}")
    row("  part latency commit -> subscriber p50 / p99 ms", f"{one['latency']['p50_ms']:.1f} / {one['latency']['p99_ms']:.1f}")
    for level, v in subs["listen_cost"].items():
        row(f"one connection LISTENing on {int(level):,} channels: ms per LISTEN; notifications/s received",
            f"{v['listen_ms']:.3f}; {v['received_per_s']:.0f}")


def _growth_table_rows(growth: dict[str, Any] | None, lines: list[str]) -> None:
    """One line per statement: p50 ms at each size, and the largest size's
    p50 as a multiple of the smallest's (flat: at most 2)."""
    if not growth:
        return
    for title, table in (("messages in the chat", growth["messages"]), ("chats stored", growth["chats"])):
        sizes = sorted(table, key=int)
        lines.append(f"growth table, p50 ms by {title}: " + " | ".join(f"{int(s):,}" for s in sizes)
                     + " | largest/smallest")
        for name in table[sizes[0]]:
            cells = " | ".join(f"{table[s][name]['p50_ms']:.2f}" for s in sizes)
            lines.append(f"  {name:<22} {cells} | {table[sizes[-1]][name]['ratio_p50']:.2f}x")


def _claim_window_rows(table: dict[str, Any] | None, lines: list[str]) -> None:
    """Claim time by chat length: p50 / p99 ms at each size and the ratio of
    the largest size's p50 to the smallest's."""
    if not table:
        return
    sizes = sorted(table, key=int)
    lines.append("claim time by messages in the chat: " + " | ".join(f"{int(s):,}" for s in sizes)
                 + " | largest/smallest (p50)")
    for name in ("claim", "window_read", "claim_and_read"):
        cells = " | ".join(f"{table[s][name]['p50_ms']:.2f}/{table[s][name]['p99_ms']:.2f}" for s in sizes)
        lines.append(f"  {name + ' p50/p99 ms':<26} {cells} | {table[sizes[-1]][name]['ratio_p50']:.2f}x")
    lines.append("  messages in the window     " + " | ".join(f"{table[s]['window_messages']:,}" for s in sizes))


def _growth_rows(
    growth: dict[str, Any] | None, contention: dict[str, Any] | None, row: Callable[[str, str], None]
) -> None:
    if growth:
        for size, v in growth["sizes"].items():
            a, s = v["admit_spend"], v["scan_spend"]
            row(f"admit_spend, {int(size):,} msgs: p50 / p99 ms (x smallest)",
                f"{a['p50_ms']:.2f} / {a['p99_ms']:.2f} ({v['ratio_to_smallest']:.2f}x)")
            row("  message scan (pre-ledger path) p50 ms; rebuild s", f"{s['p50_ms']:.1f}; {v['rebuild_s']:.2f}")
    if contention:
        for mode in ("one_user", "one_user_per_thread"):
            v = contention[mode]
            row(f"finish_turn, {contention['threads']} threads, {mode}: p50 / p99 ms",
                f"{v['p50_ms']:.2f} / {v['p99_ms']:.2f}")
            row("  finishes / s", f"{v['finishes_per_s']:.1f}")


def _sse_rows(sse: dict[str, Any] | None, row: Callable[[str, str], None]) -> None:
    if sse:
        lat = sse["latency_commit_to_client"]
        row(f"SSE {sse['streams']} streams on one serve: parts received",
            f"{sse['parts_received']} / {sse['parts_expected']}")
        row("  part latency COMMIT -> HTTP client p50 / p99 ms", f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f}")
        row("  serve CPU s during the rounds; peak RSS MB",
            f"{sse['serve_cpu_s_during_rounds']}; {sse['serve_peak_rss_mb']}")


def _tool_rows(tool: dict[str, Any] | None, row: Callable[[str, str], None]) -> None:
    if tool:
        lat, fin = tool["step_latency"], tool["finish_turn"]
        row(f"tool step ({tool['chats']} chats x {tool['steps_per_turn']}): round trips; commits",
            f"{tool['round_trips_per_step']}; {tool['commits_per_step']}")
        row("  WAL bytes per step; latency p50 / p99 ms",
            f"{tool['wal_bytes_per_step']}; {lat['p50_ms']:.2f} / {lat['p99_ms']:.2f}")
        row("  finish_turn (no tools): commits; WAL bytes; p50 ms",
            f"{fin['commits']}; {fin['wal_bytes']}; {fin['latency']['p50_ms']:.2f}")
