"""chatd benchmarks (`make bench`): dispatch throughput, pickup latency,
streaming, round trips / transactions / WAL per turn, heartbeat cost, spend
admission as one user's history grows (growth), the database cost of one
tool step of the agent loop (tool_step), the raw pgbench ceiling of the
same cluster, 1,000 concurrent SSE streams on one `chatd serve`, the growth
table (growth_table: per-chat statements at 10^3..10^6 messages, scans at
10^3..10^5 chats) and many subscribers (subscribers: one client following
2,000 chats, 200 on one chat, LISTEN on thousands of channels) and claim
time against chat length (claim_window: 10 .. 10^5 messages, bounded by the
context window). See docs/benchmarks.md.

Starts its own throwaway cluster (default durability: fsync, synchronous
commit and full page writes on) unless CHATD_BENCH_DATABASE_URL or
DATABASE_URL names a server; then it creates fresh databases on that server.
Prints a table and writes bench/results/<timestamp>.json.

One module per benchmark (dispatch, ratio (dispatch against pgbench -N in
alternating rounds), pickup, streaming, heartbeat, pgbench_ceiling, growth, growth_table, subscribers, tool_step, claim_window); support and counters hold what
they share; report prints
the table. `--only NAME,...` runs some of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from claim_window import bench_claim_window
from dispatch import bench_dispatch
from growth import bench_finish_contention, bench_growth
from growth_table import bench_growth_table
from heartbeat import bench_heartbeat
from pgbench_ceiling import bench_pgbench
from pickup import bench_pickup
from ratio import bench_ratio_rounds
from report import table
from sse import bench_sse
from streaming import bench_streaming
from subscribers import bench_subscribers
from support import (
    CLUSTER_SETTINGS,
    HERE,
    RESULTS,
    Fixture,
    Server,
    log,
    machine_info,
    server_settings,
    setup_fixture,
)
from tool_step import bench_tool_step

from chatd import migrate

BENCHMARKS = ("pgbench", "dispatch", "pickup", "streaming", "heartbeat", "sse", "tool_step", "growth",
              "growth_table", "subscribers", "claim_window")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=3000, help="chats per dispatch run")
    parser.add_argument("--procs", default="1,2,4", help="worker process counts for dispatch")
    parser.add_argument("--max-chats", type=int, default=64)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--pickup", type=int, default=1000)
    parser.add_argument("--poll-pickup", type=int, default=40)
    parser.add_argument("--stream-chats", type=int, default=100)
    parser.add_argument("--sse-streams", type=int, default=1000, help="concurrent SSE streams on one chatd serve")
    parser.add_argument("--sse-rounds", type=int, default=10, help="part batches per SSE stream")
    parser.add_argument("--pgbench-seconds", type=int, default=12)
    parser.add_argument("--pgbench-clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of pgbench -N and dispatch; the ratio is their median")
    parser.add_argument("--growth-sizes", default="1000,10000,100000,1000000",
                        help="messages of one user for the growth benchmark")
    parser.add_argument("--growth-calls", type=int, default=200, help="admit_spend calls per growth size")
    parser.add_argument("--growth-table-messages", default="1000,10000,100000,1000000",
                        help="messages in one chat for the growth table")
    parser.add_argument("--growth-table-chats", default="1000,10000,100000",
                        help="waiting chats for the growth table's claim and recovery scans")
    parser.add_argument("--growth-table-cycles", type=int, default=20, help="timed turns per growth-table size")
    parser.add_argument("--claim-window-sizes", default="10,1000,10000,100000",
                        help="messages in one chat for the claim-time benchmark")
    parser.add_argument("--claim-window-cycles", type=int, default=30, help="timed claims per claim-window size")
    parser.add_argument("--follow-chats", type=int, default=2000, help="chats one client follows (subscribers)")
    parser.add_argument("--follow-rounds", type=int, default=5, help="part batches per followed chat")
    parser.add_argument("--contention-threads", type=int, default=8, help="concurrent finishers of one user")
    parser.add_argument("--tool-chats", type=int, default=200, help="chats for the tool-step benchmark")
    parser.add_argument("--tool-steps", type=int, default=3, help="tool steps per turn")
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    parser.add_argument("--track-all", action="store_true",
                        help="pg_stat_statements.track = all: also statements inside the chatd "
                             "functions (for profiling; the statements-per-turn figure then counts them)")
    return parser


def run_selected(
    server: Server, dsn: str, fixture: Fixture, args: argparse.Namespace, only: set[str],
    results: dict[str, Any],
) -> None:
    """Run the chosen benchmarks in a fixed order, each into ``results``."""
    if "pgbench" in only:
        log("pgbench -N ...")
        results["pgbench"] = bench_pgbench(server, args.pgbench_seconds, args.pgbench_clients)
    if "dispatch" in only:
        results["dispatch"] = []
        for procs in [int(x) for x in args.procs.split(",")]:
            log(f"dispatch: {args.turns} turns, {procs} worker process(es) ...")
            results["dispatch"].append(
                bench_dispatch(server, dsn, fixture, procs, args.turns, args.max_chats, args.pool_size)
            )
        if "pgbench" in only and args.rounds > 1 and results["pgbench"].get("tps"):
            results["dispatch_rounds"] = bench_ratio_rounds(
                server, dsn, fixture, results["pgbench"], results["dispatch"], args.rounds, args.turns,
                args.max_chats, args.pool_size, args.pgbench_seconds, args.pgbench_clients,
            )
    if "pickup" in only:
        log(f"pickup latency: {args.pickup} sends (LISTEN), {args.poll_pickup} (poll-only) ...")
        results["pickup"] = bench_pickup(dsn, fixture, args.pickup, args.poll_pickup)
    if "streaming" in only:
        log(f"streaming: {args.stream_chats} chats ...")
        results["streaming"] = bench_streaming(dsn, fixture, args.stream_chats, 400, 0.01, 2)
    if "heartbeat" in only:
        log("heartbeat cost vs running chats ...")
        results["heartbeat"] = bench_heartbeat(dsn, fixture, (10, 100, 1000), 50)
    if "sse" in only:
        results["sse"] = bench_sse(dsn, fixture, args.sse_streams, args.sse_rounds)
    if "tool_step" in only:
        log(f"tool steps: {args.tool_chats} chats x {args.tool_steps} steps ...")
        results["tool_step"] = bench_tool_step(dsn, fixture, args.tool_chats, args.tool_steps)
    if "growth" in only:
        # contention first: growth leaves 10 pending chats with 10^6 messages behind
        log(f"finish contention: {args.contention_threads} concurrent finishers ...")
        results["finish_contention"] = bench_finish_contention(dsn, fixture, args.contention_threads, 50)
        sizes = [int(x) for x in args.growth_sizes.split(",")]
        log(f"growth: admit_spend at {sizes} messages of one user ...")
        results["growth"] = bench_growth(dsn, fixture, sizes, args.growth_calls)
    if "subscribers" in only:
        log(f"subscribers: one client following {args.follow_chats} chats; 200 on one chat; LISTEN cost ...")
        results["subscribers"] = bench_subscribers(dsn, fixture, args.follow_chats, args.follow_rounds)
    if "growth_table" in only:
        log("growth table: per-chat statements at 10^3..10^6 messages, scans at 10^3..10^5 chats ...")
        results["growth_table"] = bench_growth_table(
            server, [int(x) for x in args.growth_table_messages.split(",")],
            [int(x) for x in args.growth_table_chats.split(",")], args.growth_table_cycles,
        )
    if "claim_window" in only:
        sizes = [int(x) for x in args.claim_window_sizes.split(",")]
        log(f"claim window: claim and window read at {sizes} messages ...")
        results["claim_window"] = bench_claim_window(server, sizes, args.claim_window_cycles)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.track_all:
        CLUSTER_SETTINGS["pg_stat_statements.track"] = "all"
    only = set(args.only.split(","))
    unknown = only - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    started = time.monotonic()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
    }
    server = Server.start()
    try:
        dsn = server.create_database("chatd_bench")
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            except psycopg.Error as exc:
                log(f"no pg_stat_statements, statement counts will be missing: {exc}")
        migrate.apply(dsn, log=lambda _m: None)
        results["postgres"] = server_settings(dsn)
        results["cluster"] = "own throwaway cluster" if server.cluster else "given server"
        run_selected(server, dsn, setup_fixture(dsn), args, only, results)
    finally:
        server.stop()
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["duration_s"] = round(time.monotonic() - started, 1)
    ceiling = results.get("pgbench", {}).get("tps")
    if ceiling:
        for d in results.get("dispatch", []):
            d["ratio_to_pgbench"] = round(d["turns_per_s_db"] / ceiling, 4)
        if "streaming" in results:
            results["streaming"]["ratio_to_pgbench"] = round(results["streaming"]["parts_per_s"] / ceiling, 4)
    print(table(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {out.relative_to(HERE.parent)} in {results['duration_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
