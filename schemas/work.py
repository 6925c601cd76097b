"""Messages between actors: queued work, lifecycle events, the host registry."""

from __future__ import annotations

import msgspec
from msgspec import Struct

from schemas.replies import Figures
from schemas.requests import Kind, Priority, ToolCall

__all__ = [
    "Answer",
    "CacheStore",
    "ChainWork",
    "HostInfo",
    "HostLoad",
    "ModelLoad",
    "RequestEvent",
    "Work",
]


class Work(Struct, kw_only=True, tag_field="type", tag="work"):
    """A request the router accepted, queued for any executor serving `model`.

    `body` is the client's request exactly as sent: the router decoded it once to
    validate it and forwards the bytes rather than encoding them again.
    """

    request_id: str
    kind: Kind
    model: str
    body: msgspec.Raw
    stream: bool = True
    reply: str | None = None
    priority: Priority = Priority.INTERACTIVE
    accepted_at: float = 0.0
    deadline_at: float | None = None
    # The model the client asked for, when this work runs on a fallback of it.
    fallback_from: str | None = None
    # Models still to try, in order, if this one times out before its first token.
    fallbacks: list[str] = []
    # Set when the answer may be cached: the executor hands it to the cache under this key.
    cache_key: str | None = None
    # The prompt template the request was rendered from, for its usage figures.
    template: str | None = None


class RequestEvent(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="request"):
    """How one request ended, for the stats recorder and anyone watching."""

    request_id: str
    kind: str
    model: str
    host: str = ""
    outcome: str = "ok"
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    attempt: int = 1
    cached: bool = False
    # The model asked for, when a fallback served the request.
    fallback_from: str | None = None
    template: str | None = None
    # The answer went on on this host after another failed mid-stream.
    moved: bool = False
    at: float = 0.0


class HostInfo(Struct, kw_only=True, tag_field="type", tag="host"):
    """What an executor announces about its host in the registry, refreshed with a TTL."""

    host: str
    executor: str
    # The host's API (`ollama` or `openai`), so the health monitor checks it its way.
    kind: str = "ollama"
    models: list[str] = []
    # Models whose circuit is open on this host: it takes no work for them for now.
    blocked: list[str] = []
    version: str = ""
    up: bool = True
    at: float = 0.0


class ModelLoad(Struct, kw_only=True, omit_defaults=True):
    """One host's state for one model, as its executor last published it."""

    # Slots taking work now: 0 while the circuit is open or the host is down.
    slots: int = 0
    in_flight: int = 0
    # Loaded in the host's memory (`/api/ps`), so a request starts without a load.
    warm: bool = False
    # Work items taken since the executor started (round-robin keeps these even).
    taken: int = 0
    succeeded: int = 0
    failed: int = 0
    # Moving average of the time a successful request took on this host, in ms.
    service_ms: float | None = None


class HostLoad(Struct, kw_only=True, tag_field="type", tag="load"):
    """What an executor publishes on the load board whenever its load changes."""

    executor: str
    host: str
    models: dict[str, ModelLoad] = {}
    # The requests it is serving now: a redelivered one is left to a live owner.
    serving: list[str] = []
    at: float = 0.0


class Answer(Figures, kw_only=True, omit_defaults=True):
    """A whole answer and Ollama's figures for it: what the cache keeps and replays."""

    kind: Kind
    model: str
    host: str = ""
    text: str = ""
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None
    embeddings: list[list[float]] | None = None
    fallback_from: str | None = None
    moved: bool = False


class CacheStore(Struct, kw_only=True, tag_field="type", tag="cache_store"):
    """An executor's finished cacheable answer, for the cache actor to keep."""

    key: str
    answer: Answer
    at: float = 0.0


class ChainWork(Struct, kw_only=True, tag_field="type", tag="chain_work"):
    """A reasoning chain a coordinator accepted, queued for any coordinator to run (and
    to take over, should the one running it die)."""

    chain_id: str
    # The client's `ReasonRequest` exactly as sent.
    body: msgspec.Raw
    # Where the whole result goes when the client did not ask for a stream.
    reply: str | None = None
    accepted_at: float = 0.0
    deadline_at: float | None = None
