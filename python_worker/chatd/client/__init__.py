"""The chatd client: application functions and race-free chat subscriptions.

Lives here: `errors` (re-exported from chatd.protocol), `models` (what the
client reads), `events` (what a subscription emits), `client` (`Client`),
`subscription` (`Subscription`: snapshot, hints, resume). May import
chatd.protocol and chatd.listener; never the worker, the LLM adapters, the
CLI or chatd.testing. Every public name is re-exported here:
``from chatd.client import Client, MessageEvent`` is the supported import.

Usage:

    async with await Client.connect(dsn) as client:
        chat_id = await client.create_chat(user_id, org_id, "Hello!")
        async with client.subscribe(user_id, chat_id) as events:
            async for event in events:
                ...

Calls go through a psycopg_pool.AsyncConnectionPool (autocommit, one SQL
function call per method). Every subscription of one Client shares ONE
autocommit listener connection, opened on the first subscription.

Subscribe protocol (DESIGN.md section 5, docs/client.md):

1. LISTEN on ``chatd_chat_<chat id>`` and wait until the LISTEN is executed;
2. read a snapshot with ``chatd.get_chat_snapshot`` (chat row with its version,
   messages, queue, stream parts of the running turn) and emit it;
3. apply only notifications newer than what was emitted: chat hints by
   version, streamed parts by (lease, seq). A hint is only a hint, never
   data (any database login can LISTEN and NOTIFY on any channel): the
   subscription re-reads durable state (messages after the last seen id,
   stream parts after the last seen seq through ``chatd.get_stream_parts``)
   and emits the difference. A forged notification at worst causes a re-read.

After the listener reconnects, every subscription re-snapshots (NOTIFY is not
durable) and emits only what it has not emitted yet. Every database call has a
timeout (``Client.timeout``, 5 s by default) when the caller gives none; a
failed refresh is logged and retried on the next hint or reconnect instead of
ending the subscription.

Database errors raised by chatd's functions (SQLSTATE class ``CD``) surface as
`ChatdError` subclasses; other errors (connection loss, timeouts) propagate
unchanged.
"""
from chatd.client.client import DEFAULT_TIMEOUT, Client
from chatd.client.errors import (
    ChatArchived,
    ChatdError,
    ChatError,
    ChatNotFound,
    Forbidden,
    InvalidInput,
    InvalidTransition,
    LeaseLost,
    QueueFull,
    ToolCallNotPending,
    UsageLimitExceeded,
    error_from_psycopg,
)
from chatd.client.events import (
    ChatDeletedEvent,
    ChatEvent,
    ChildrenEvent,
    ErrorEvent,
    Event,
    MessageEvent,
    MessagesDeletedEvent,
    PartsEvent,
    QueueEvent,
    RetryEvent,
    StatusEvent,
    TitleEvent,
    ToolCallsEvent,
)
from chatd.client.models import (
    ChatInfo,
    ChatSummary,
    ChildChat,
    Message,
    MessagePage,
    QueuedMessage,
    Snapshot,
    StreamParts,
)
from chatd.client.subscription import Subscription
from chatd.protocol.names import chat_channel

__all__ = [
    "DEFAULT_TIMEOUT",
    "ChatArchived",
    "ToolCallNotPending",
    "ChatDeletedEvent",
    "ChatError",
    "ChatEvent",
    "ChatInfo",
    "ChatNotFound",
    "ChatSummary",
    "ChatdError",
    "ChildChat",
    "ChildrenEvent",
    "Client",
    "ErrorEvent",
    "Event",
    "Forbidden",
    "InvalidInput",
    "InvalidTransition",
    "LeaseLost",
    "Message",
    "MessagePage",
    "MessageEvent",
    "MessagesDeletedEvent",
    "PartsEvent",
    "QueueEvent",
    "QueuedMessage",
    "QueueFull",
    "RetryEvent",
    "Snapshot",
    "StatusEvent",
    "StreamParts",
    "Subscription",
    "TitleEvent",
    "ToolCallsEvent",
    "UsageLimitExceeded",
    "chat_channel",
    "error_from_psycopg",
]
