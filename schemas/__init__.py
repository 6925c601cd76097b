"""The wire contract of ollamesh: msgspec Structs, error codes and codecs. No I/O.

Modules by protocol: `requests` (generate, chat, embed), `replies` (streams, results,
errors, stats), `fleet` (health and model management), `templates` (the prompt store),
`cache` (invalidation), `reasoning` (the reasoning coordinator). Messages between
ollamesh's own processes are in `internal`.

Unknown fields, one rule:
- requests of the inference API (generate, chat, embed), replies, streams and internal
  messages ignore fields they do not know: an older reader works with a newer writer
  (new fields always get defaults; a field's type never changes), and Ollama's own
  clients send fields ollamesh may not know yet;
- management requests (`health`, `models.*`, `prompts.*`, `cache.invalidate`) reject
  them: a misspelt field would change what the command does (`{"modle": "x"}` to
  `cache.invalidate` would drop every answer);
- the configuration (`bus.config`) rejects them: a misspelt setting is an error, not a
  silent default. A test keeps the rule.
"""

from schemas.codec import REQUEST_TYPES, decode_reply, decode_request, decode_stream, encode
from schemas.errors import ErrorCode, http_status, is_retryable
from schemas.replies import (
    Accepted,
    ChatResult,
    Chunk,
    Done,
    EmbedResult,
    Error,
    Figures,
    FleetStats,
    GenerateResult,
    QueueDepth,
    QueueStats,
    ReasonResult,
    RecorderState,
    Reply,
    Result,
    Stats,
    StatsRow,
    StreamMessage,
)
from schemas.requests import (
    ROUTING_FIELDS,
    CacheMode,
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    Kind,
    Message,
    Name,
    Options,
    Priority,
    Request,
    ToolCall,
    ToolCallFunction,
    without_routing,
)

__all__ = [
    "REQUEST_TYPES",
    "ROUTING_FIELDS",
    "Accepted",
    "CacheMode",
    "ChatRequest",
    "ChatResult",
    "Chunk",
    "Done",
    "EmbedRequest",
    "EmbedResult",
    "Error",
    "ErrorCode",
    "Figures",
    "FleetStats",
    "GenerateRequest",
    "GenerateResult",
    "Kind",
    "Message",
    "Name",
    "Options",
    "Priority",
    "QueueDepth",
    "QueueStats",
    "ReasonResult",
    "RecorderState",
    "Reply",
    "Request",
    "Result",
    "Stats",
    "StatsRow",
    "StreamMessage",
    "ToolCall",
    "ToolCallFunction",
    "decode_reply",
    "decode_request",
    "decode_stream",
    "encode",
    "http_status",
    "is_retryable",
    "without_routing",
]
