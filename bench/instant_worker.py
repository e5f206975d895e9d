"""A chatd worker process whose LLM answers instantly (no HTTP), for bench/run.py.

Runs the real `chatd.worker.Worker`; only the `stream` function is replaced:

* instant mode (default): one TextDelta and a Finished with usage;
* streaming mode (``--deltas N``): N TextDeltas, one every ``--delta-interval``
  seconds, each ``"<unix time>;"`` so a subscriber can tell when it was made.

Prints ``READY`` on stdout once the worker listens (or polls); SIGTERM stops it
gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from chatd.config import WorkerConfig
from chatd.llm import Finished, ModelSpec, PromptMessage, TextDelta, Usage
from chatd.worker import Worker

USAGE = Usage(input_tokens=12, output_tokens=3)


async def instant_stream(
    spec: ModelSpec, messages: Sequence[PromptMessage], **_kwargs: Any
) -> AsyncIterator[TextDelta | Finished]:
    yield TextDelta("ok")
    yield Finished(USAGE, "bench", "stop")


def streaming(deltas: int, interval: float) -> Any:
    async def stream(
        spec: ModelSpec, messages: Sequence[PromptMessage], **_kwargs: Any
    ) -> AsyncIterator[TextDelta | Finished]:
        for _ in range(deltas):
            await asyncio.sleep(interval)
            yield TextDelta(f"{time.time():.6f};")
        yield Finished(Usage(input_tokens=12, output_tokens=deltas), "bench", "stop")

    return stream


async def main(args: argparse.Namespace) -> None:
    config = WorkerConfig(
        database_url=args.dsn,
        worker_id=args.worker_id,
        max_chats=args.max_chats,
        pool_size=args.pool_size,
        poll_only=args.poll_only,
        poll_interval=args.poll_interval,
        heartbeat_interval=args.heartbeat_interval,
        janitor_interval=3600.0,
        log_level="warning",
    )
    stream = streaming(args.deltas, args.delta_interval) if args.deltas else instant_stream
    worker = Worker(config, stream=stream)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, worker.stop)
    loop.add_signal_handler(signal.SIGINT, worker.stop)
    task = asyncio.create_task(worker.run())
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
        return
    print("READY", flush=True)
    await task


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--max-chats", type=int, default=64)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--poll-only", action="store_true")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--heartbeat-interval", type=float, default=None)
    parser.add_argument("--deltas", type=int, default=0)
    parser.add_argument("--delta-interval", type=float, default=0.01)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    profile = os.environ.get("CHATD_BENCH_PROFILE")  # a path: cProfile stats of this process
    if profile:
        import cProfile

        cProfile.run("asyncio.run(main(parse(sys.argv[1:])))", f"{profile}.{os.getpid()}")
    else:
        asyncio.run(main(parse(sys.argv[1:])))
