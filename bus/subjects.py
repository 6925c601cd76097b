"""Every subject, stream and bucket name ollamesh uses, derived from one prefix."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

__all__ = ["Subjects", "canonical_model", "model_from_token", "model_token"]

_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# Characters that may stand for themselves in a subject token and in a JetStream name.
_PLAIN = re.compile(r"[A-Za-z0-9-]")
_ESCAPE = "_"


def canonical_model(name: str) -> str:
    """Ollama's full name for a model: `llama3` is `llama3:latest`, so both share a queue."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


@functools.lru_cache(maxsize=4096)
def model_token(model: str) -> str:
    """Map a model name to one subject-safe token, injectively.

    Model names hold `.`, `:` and `/`; subjects and consumer names cannot. Every other
    character, `_` included, becomes `_` and two hex digits per UTF-8 byte, so the
    mapping is reversible and no two models share a token.
    """
    out: list[str] = []
    for ch in model:
        if _PLAIN.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"{_ESCAPE}{b:02x}" for b in ch.encode())
    return "".join(out)


def model_from_token(token: str) -> str:
    """Invert `model_token`."""
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == _ESCAPE:
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(token[i].encode())
            i += 1
    return raw.decode()


@dataclass(frozen=True)
class Subjects:
    """Subject, stream and bucket names for one deployment prefix (default `llm`)."""

    prefix: str = "llm"
    _base: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ValueError(f"prefix must match {_PREFIX.pattern}, got {self.prefix!r}")
        object.__setattr__(self, "_base", f"{self.prefix}.v1")

    # Client-facing request/reply subjects.
    @property
    def generate(self) -> str:
        return f"{self._base}.generate"

    @property
    def chat(self) -> str:
        return f"{self._base}.chat"

    @property
    def embed(self) -> str:
        return f"{self._base}.embed"

    def request(self, kind: str) -> str:
        """The subject a request of `kind` (generate, chat, embed) is sent to."""
        return f"{self._base}.{kind}"

    def stream(self, request_id: str) -> str:
        """Where a request's chunks and its final `done` or `error` appear."""
        return f"{self._base}.stream.{request_id}"

    @property
    def streams(self) -> str:
        return f"{self._base}.stream.*"

    def cancel(self, request_id: str) -> str:
        return f"{self._base}.cancel.{request_id}"

    @property
    def cancels(self) -> str:
        return f"{self._base}.cancel.*"

    # Internal subjects: clients may not publish here.
    def work(self, model: str, priority: str = "interactive") -> str:
        """The work queue subject of one model and priority (interactive or batch)."""
        return f"{self._base}.work.{model_token(model)}.{priority}"

    @property
    def works(self) -> str:
        return f"{self._base}.work.*.*"

    @property
    def chain_work(self) -> str:
        """The queue of reasoning chains (`_chains` is no model's token: `_` escapes hex)."""
        return f"{self._base}.work._chains.all"

    @property
    def reason(self) -> str:
        """Request/reply: start a reasoning chain."""
        return f"{self._base}.reason"

    def reasoning(self, verb: str) -> str:
        """Request/reply to the reasoning coordinators: get, list."""
        return f"{self._base}.reason.{verb}"

    def construction(self, verb: str) -> str:
        """Request/reply to the construction analyzers: hoai, safety, query, quantities,
        report, get, list, projects.put, projects.get, projects.list."""
        return f"{self._base}.construction.{verb}"

    def keys(self, verb: str) -> str:
        """Request/reply to the HTTP gateways' API keys: create, list, revoke (a change is
        announced on `event("keys")`)."""
        return f"{self._base}.keys.{verb}"

    def board(self, executor: str) -> str:
        """Where one executor publishes its load (core NATS, not stored)."""
        return f"{self._base}.board.{model_token(executor)}"

    @property
    def boards(self) -> str:
        return f"{self._base}.board.*"

    def prompts(self, verb: str) -> str:
        """Request/reply to the prompt store: put, get, list, delete, render."""
        return f"{self._base}.prompts.{verb}"

    def models(self, verb: str) -> str:
        """Request/reply to the health monitor: list, show, ps, pull, load, unload, delete."""
        return f"{self._base}.models.{verb}"

    @property
    def health(self) -> str:
        """Request/reply: the fleet view (hosts, models on them, queues)."""
        return f"{self._base}.health"

    def pull_progress(self, host: str, model: str) -> str:
        """Where a pull of `model` onto `host` reports its progress (stored with the events)."""
        return f"{self._base}.events.pull.{model_token(host)}.{model_token(model)}"

    def pull_progresses(self, model: str | None = None) -> str:
        """Progress of every pull, or of every pull of `model`."""
        return f"{self._base}.events.pull.*.{model_token(model) if model else '*'}"

    @property
    def stats(self) -> str:
        """Request/reply: request figures per model and host over recent windows."""
        return f"{self._base}.stats"

    @property
    def queue_stats(self) -> str:
        """Request/reply: waiting and running work per model."""
        return f"{self._base}.stats.queues"

    def event(self, name: str) -> str:
        return f"{self._base}.events.{name}"

    @property
    def events(self) -> str:
        return f"{self._base}.events.>"

    # JetStream names cannot contain dots: they use the prefix with underscores.
    @property
    def chunk_stream(self) -> str:
        return f"{self.prefix.upper()}_CHUNKS"

    @property
    def work_stream(self) -> str:
        return f"{self.prefix.upper()}_WORK"

    @property
    def event_stream(self) -> str:
        return f"{self.prefix.upper()}_EVENTS"

    @property
    def host_bucket(self) -> str:
        return f"{self.prefix}_hosts"

    @property
    def health_bucket(self) -> str:
        return f"{self.prefix}_health"

    @property
    def cache_bucket(self) -> str:
        return f"{self.prefix}_cache"

    @property
    def cache_invalidate(self) -> str:
        """Request/reply: drop cached answers of one model, or all."""
        return f"{self._base}.cache.invalidate"

    @property
    def cache_invalidated(self) -> str:
        """Broadcast to routers: forget what they hold in memory."""
        return f"{self._base}.cache.invalidated"

    @property
    def documents_bucket(self) -> str:
        """The object store documents too large for one message travel through."""
        return f"{self.prefix}_documents"

    @property
    def limit_bucket(self) -> str:
        return f"{self.prefix}_limits"

    @property
    def claim_bucket(self) -> str:
        """Who ends each request that has a deadline (the router, or its executor)."""
        return f"{self.prefix}_claims"

    def work_consumer(self, model: str, priority: str = "interactive") -> str:
        """The durable consumer every executor serving `model` pulls `priority` work from."""
        return f"{priority}-{model_token(model)}"
