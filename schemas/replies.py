"""What comes back: acceptance, stream chunks, the final `done`, results and errors."""

from __future__ import annotations

import msgspec
from msgspec import Struct

from schemas.reasoning import Step, StepResult
from schemas.requests import Message, ToolCall

__all__ = [
    "Accepted",
    "ChatResult",
    "Chunk",
    "Done",
    "EmbedResult",
    "Error",
    "Figures",
    "FleetStats",
    "GenerateResult",
    "QueueDepth",
    "QueueStats",
    "ReasonResult",
    "RecorderState",
    "Reply",
    "Result",
    "Stats",
    "StatsRow",
    "StreamMessage",
]


class Accepted(Struct, kw_only=True, tag_field="type", tag="accepted"):
    """The request is queued; its tokens will appear on `stream`."""

    request_id: str
    model: str
    stream: str
    # Set for a reasoning chain (`reason`): its id (the same as request_id).
    chain_id: str | None = None


class Chunk(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="chunk"):
    """A run of tokens; `seq` counts 1, 2, 3, ... per request."""

    request_id: str
    seq: int
    text: str = ""
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None
    # The host's tokens in it (what an answer that moves to another host counts on).
    tokens: int = 0


class Figures(Struct, kw_only=True, omit_defaults=True):
    """Ollama's own figures for an answer, under Ollama's names (durations in ns)."""

    done_reason: str | None = None
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class Stats(Figures, kw_only=True, omit_defaults=True, tag_field="type"):
    """Who served a request, and Ollama's figures for it."""

    request_id: str = ""
    model: str = ""
    host: str = ""
    # Set when the model asked for could not serve and a fallback did.
    fallback_from: str | None = None
    # The answer came from the cache (host is then the host that first produced it).
    cached: bool = False
    # Its host failed mid-answer and another went on from the last token sent (`host`).
    moved: bool = False


class Done(Stats, tag="done"):
    """The last message of a successful stream; `seq` follows the last chunk's.

    A reasoning chain's carries its id, its steps and its answer too; its figures are the
    whole chain's (tokens of every call, the chain's duration).
    """

    seq: int = 0
    chain_id: str | None = None
    steps: list[StepResult] | None = None
    answer: str | None = None


class ReasonResult(Stats, kw_only=True, tag="reason_result"):
    """A whole reasoning chain (`reason` with `stream: false`)."""

    chain_id: str
    answer: str
    steps: list[StepResult] = []


class GenerateResult(Stats, kw_only=True, tag="generate_result"):
    """A whole generate answer, as Ollama's non-streamed `/api/generate` gives it."""

    response: str = ""
    thinking: str | None = None
    # Required, so it is always on the wire as in Ollama's replies.
    done: bool


class ChatResult(Stats, kw_only=True, tag="chat_result"):
    """A whole chat answer, as Ollama's non-streamed `/api/chat` gives it."""

    message: Message = msgspec.field(default_factory=lambda: Message(role="assistant"))
    done: bool


class EmbedResult(Stats, tag="embed_result"):
    """Embeddings, as Ollama's `/api/embed` gives them."""

    embeddings: list[list[float]] = []


class Error(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="error"):
    """A typed failure; on a stream it is the last message, like `done`."""

    code: str
    message: str
    retryable: bool = False
    retry_after_ms: int | None = None
    request_id: str | None = None
    seq: int | None = None


class QueueDepth(Struct, kw_only=True):
    """One model's queue: waiting work per priority, work running, how fast it drains."""

    model: str
    interactive: int = 0
    batch: int = 0
    running: int = 0
    slots: int = 0
    # Requests finished per second over the last minute, on every host together.
    drain_per_s: float = 0.0


class QueueStats(Struct, kw_only=True, tag_field="type", tag="queues"):
    """The answer on `<prefix>.v1.stats.queues`."""

    models: list[QueueDepth]
    at: float


class StatsRow(Struct, kw_only=True, omit_defaults=True):
    """One model's (or one host's) figures over a window; latencies in milliseconds."""

    model: str | None = None
    host: str | None = None
    requests: int = 0
    success_rate: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    ttft_ms_p50: float | None = None
    ttft_ms_p99: float | None = None
    # Output tokens per second of generation (after the first token), successes only.
    tokens_per_s: float | None = None
    cache_hit_rate: float | None = None


class RecorderState(Struct, kw_only=True, omit_defaults=True):
    """How the recorder answering the stats is doing: figures missing from the windows
    show here first."""

    # Its loop writing events to the table is running (not crashed, waiting to restart).
    running: bool = False
    # Times that loop crashed and was started again, and its last crash.
    restarts: int = 0
    last_error: str | None = None
    failed_at: float | None = None
    # Since this recorder started: events written, events set aside in dead_letters.
    written: int = 0
    set_aside: int = 0
    # Every request event kept in dead_letters so far, by any recorder.
    dead_letters: int = 0


class FleetStats(Struct, kw_only=True, tag_field="type", tag="stats"):
    """The answer on `<prefix>.v1.stats`: per model and per host, for each window
    (`1m`, `1h`, `1d`)."""

    windows: dict[str, list[StatsRow]]
    at: float
    recorder: RecorderState | None = None


Result = GenerateResult | ChatResult | EmbedResult
# A reasoning chain's stream has `step` messages too; a model's never does.
StreamMessage = Chunk | Step | Done | Error
Reply = Accepted | GenerateResult | ChatResult | EmbedResult | Error
