"""LLM providers: one streaming turn, whatever the provider.

* `chatd.llm.stream`: `stream_turn`, the timeouts and guarantees the worker
  relies on;
* one module per provider wire: `openai_chat` (OpenAI Chat Completions and
  compatible servers), `openai_responses` (the OpenAI Responses API),
  `anthropic_messages` (Anthropic Messages); a new
  provider is a new module with a translator and a prompt mapping;
* `chatd.llm.content`: prompt parts shared by the wires;
* `chatd.llm.types`: model spec, prompt, stream events, API key, SDK clients;
* `chatd.llm.classify`: provider failures -> `ChatError` (retryable or not,
  retry-after).

May import: chatd.protocol and the provider SDKs. Never the worker, the
client, the CLI or chatd.testing.
"""

from chatd.llm.anthropic_messages import to_anthropic_messages
from chatd.llm.classify import ChatError, ChatErrorKind, ChatTurnError, classify, make_error
from chatd.llm.openai_chat import to_openai_messages
from chatd.llm.stream import stream_turn
from chatd.llm.types import (
    DUMMY_API_KEY,
    PROVIDER_APIS,
    PROVIDER_KINDS,
    STREAM_CLOSED,
    ClientCache,
    Finished,
    ModelSpec,
    PromptMessage,
    ProviderKind,
    ReasoningDelta,
    ReasoningSignature,
    RedactedReasoning,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    ToolSpec,
    Usage,
    estimate_usage,
    resolve_api_key,
)

__all__ = [
    "DUMMY_API_KEY",
    "PROVIDER_APIS",
    "PROVIDER_KINDS",
    "STREAM_CLOSED",
    "ChatError",
    "ChatErrorKind",
    "ChatTurnError",
    "ClientCache",
    "Finished",
    "ModelSpec",
    "PromptMessage",
    "ProviderKind",
    "ReasoningDelta",
    "ReasoningSignature",
    "RedactedReasoning",
    "StreamEvent",
    "TextDelta",
    "ToolCallDelta",
    "ToolCallStart",
    "ToolSpec",
    "Usage",
    "classify",
    "estimate_usage",
    "make_error",
    "resolve_api_key",
    "stream_turn",
    "to_anthropic_messages",
    "to_openai_messages",
]
