"""`chatd worker`'s engine: listen, claim, call the LLM, stream, write back.

The worker decides nothing about chat state: SQL does (docs/state-machine.md).

* `chatd.worker.worker`: `Worker`: connection, lifecycle (start, drain,
  stop), notifications;
* `chatd.worker.loops`: the claim, heartbeat and maintenance loops;
* `chatd.worker.turn`: one turn (`TurnRun`: streaming, flushing parts,
  finishing, failures);
* `chatd.worker.finish`: the finish batcher (`chatd.finish_turns`).

May import: chatd.protocol, chatd.llm, chatd.tools, chatd.config, chatd.listener,
chatd.metrics, chatd.logs. Never chatd.client, chatd.cli or chatd.testing.
"""

from chatd.protocol.errors import LeaseLost
from chatd.worker.finish import BatchFailed, FinishBatcher
from chatd.worker.turn import Claim, Turn, TurnRun
from chatd.worker.worker import StreamFn, Worker, WorkerFatal

__all__ = [
    "BatchFailed",
    "Claim",
    "FinishBatcher",
    "LeaseLost",
    "StreamFn",
    "Turn",
    "TurnRun",
    "Worker",
    "WorkerFatal",
]
