"""Loading a claimed turn's history past the first page that
``acquire_chats`` returns: page by page through ``chatd.turn_history``, fenced
by worker and lease, bounded by the worker's ``max_history_bytes``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import psycopg

from chatd.llm import ChatError, ChatErrorKind, ChatTurnError
from chatd.protocol import queries

if TYPE_CHECKING:
    from chatd.worker.turn import Claim
    from chatd.worker.worker import Worker

__all__ = ["load_history"]


async def load_history(worker: Worker, claim: Claim) -> None:
    """Reads the rest of the history after acquire_chats' first page,
    page by page (turn_history). A history over the worker's
    max_history_bytes, or one chatd cannot return, fails this turn for
    good (kind config); other chats are not affected. A lost lease raises
    LeaseLost."""
    messages = list(claim.messages)
    loaded = sum(len(json.dumps(m.get("content"))) for m in messages)
    provider = claim.spec().provider_name
    while True:
        after = int(messages[-1]["id"]) if messages else 0
        try:
            rows = await worker._fetch(queries.TURN_HISTORY, {
                "worker_id": worker.config.worker_id, "chat_id": claim.chat_id, "lease": claim.lease,
                "after_id": after, "limit": worker.history_page,
            })
        except (psycopg.OperationalError, TimeoutError) as exc:
            raise ChatTurnError(ChatError(
                f"could not read the chat history: {exc}"[:500], ChatErrorKind.generic, provider, True,
            )) from exc
        except psycopg.Error as exc:
            raise ChatTurnError(ChatError(
                f"chatd could not return the chat history: {exc.diag.message_primary or exc}"[:500],
                ChatErrorKind.config, provider, False,
            )) from exc
        if not rows:
            claim.messages, claim.history_complete = messages, True
            return
        for message_id, role, content, size in rows:
            loaded += int(size)
            if loaded > worker.max_history_bytes:
                raise ChatTurnError(ChatError(
                    f"the chat history is larger than this worker's limit of {worker.max_history_bytes} "
                    "bytes: start a new chat or edit an earlier message",
                    ChatErrorKind.config, provider, False,
                ))
            messages.append({"id": message_id, "role": role, "content": content})
