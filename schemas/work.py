"""Messages between actors: queued work, lifecycle events, the host registry."""

from __future__ import annotations

import msgspec
from msgspec import Struct

from schemas.requests import Kind

__all__ = ["HostInfo", "RequestEvent", "Work"]


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
    accepted_at: float = 0.0
    deadline_at: float | None = None
    # The model the client asked for, when this work runs on a fallback of it.
    fallback_from: str | None = None
    # Models still to try, in order, if this one times out before its first token.
    fallbacks: list[str] = []


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
    at: float = 0.0


class HostInfo(Struct, kw_only=True, tag_field="type", tag="host"):
    """What an executor announces about its host in the registry, refreshed with a TTL."""

    host: str
    executor: str
    models: list[str] = []
    # Models whose circuit is open on this host: it takes no work for them for now.
    blocked: list[str] = []
    version: str = ""
    up: bool = True
    at: float = 0.0
