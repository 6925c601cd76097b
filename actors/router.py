"""The router actor: decodes once, validates, picks the model, enqueues work durably."""

from __future__ import annotations

import time
import uuid
from functools import partial

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import Error as JetStreamError

from actors.admission import canonical_model, resolve_model, validate
from actors.selection import ModelStats, Selector, task_role
from bus.actor import Actor
from bus.config import Config
from bus.errors import (
    BadRequest,
    ModelNotFound,
    NoHealthyHost,
    OllameshError,
    PayloadTooLarge,
    Unavailable,
)
from bus.registry import HostRegistry
from bus.subjects import Subjects
from schemas import Accepted, Kind, Request, Work, decode_event, decode_request, encode

__all__ = ["Router"]

_QUEUE = "router"
_ENQUEUE_TIMEOUT_S = 5.0
_TRACKED_MAX = 100_000


class Router(Actor):
    """Admission: any number of routers share the request subjects as a queue group."""

    name = "router"

    def __init__(
        self, nc: NATS, subjects: Subjects, config: Config, registry: HostRegistry
    ) -> None:
        super().__init__(nc, subjects, max_concurrent=config.router.max_concurrent)
        self.config = config
        self.registry = registry
        roles, routing = config.roles, config.routing
        by_model = {canonical_model(roles.get(k, k)): w for k, w in routing.weights.items()}
        self.selector = Selector(routing.strategy, by_model)
        self.candidates = list(
            dict.fromkeys(canonical_model(roles.get(c, c)) for c in routing.candidates)
        )
        self.stats: dict[str, ModelStats] = {}
        # This router's requests not yet finished, oldest first: request id -> model.
        self._mine: dict[str, str] = {}

    async def setup(self) -> None:
        self.js = self.nc.jetstream()
        for kind in Kind:
            await self.serve(self.subjects.request(kind), partial(self.admit, kind), queue=_QUEUE)
        await self.serve(self.subjects.event("request"), self._finished)

    async def _finished(self, msg: Msg) -> None:
        """Learn how one of this router's requests ended (for least-loaded and adaptive)."""
        event = decode_event(msg.data)
        model = self._mine.pop(event.request_id, None)
        if model is not None:
            self.stats[model].finished(event.outcome == "ok", event.latency_ms)

    def _choose(self, request: Request) -> str:
        """A model for a request that names none: a task rule's role, else balancing."""
        role = task_role(request, self.config.routing)
        if role is not None:
            if role not in self.config.roles:
                raise BadRequest(f"the request needs the {role!r} role, and none is configured")
            return canonical_model(self.config.roles[role])
        served = [m for m in self.candidates if self.registry.serves(m)]
        if not served:
            raise NoHealthyHost(f"no healthy host serves any of {', '.join(self.candidates)}")
        return self.selector.choose(served, self.stats)

    def _chain(self, model: str) -> list[str]:
        """The models `model` falls back to, in order, itself and repeats left out."""
        roles, routing = self.config.roles, self.config.routing
        named = next(
            (
                c
                for key, c in routing.fallbacks.items()
                if canonical_model(roles.get(key, key)) == model
            ),
            routing.default_fallbacks,
        )
        chain = [canonical_model(roles.get(n, n)) for n in named]
        return [m for m in dict.fromkeys(chain) if m != model]

    def _track(self, request_id: str, model: str) -> None:
        self.stats.setdefault(model, ModelStats()).in_flight += 1
        self._mine[request_id] = model
        if len(self._mine) > _TRACKED_MAX:  # events lost (a restart): forget the oldest
            lost = self._mine.pop(next(iter(self._mine)))
            self.stats[lost].in_flight = max(0, self.stats[lost].in_flight - 1)

    async def admit(self, kind: Kind, msg: Msg) -> bytes | None:
        """Turn one request into queued work; return the reply (None: the executor replies)."""
        limit = min(self.config.router.max_request_bytes, self.nc.max_payload)
        if len(msg.data) > limit:
            raise PayloadTooLarge(f"request is {len(msg.data)} bytes; the limit is {limit}")
        try:
            request = decode_request(kind, msg.data)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid {kind} request: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from exc
        request_id = request.request_id or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            return await self._enqueue(kind, request_id, request, msg)
        except OllameshError as exc:
            exc.request_id = request_id
            raise

    async def _enqueue(
        self,
        kind: Kind,
        request_id: str,
        request: msgspec.Struct,
        msg: Msg,
    ) -> bytes | None:
        validate(request, self.config.router)  # type: ignore[arg-type]
        model = resolve_model(request, self.config.roles)  # type: ignore[arg-type]
        if model is None:
            model = self._choose(request)  # type: ignore[arg-type]
        chain = self._chain(model) if request.fallback else []  # type: ignore[attr-defined]
        asked = model
        while not self.registry.serves(model) and chain:
            model = chain.pop(0)
        if not self.registry.serves(model):
            self._check_served(asked)
        stream: bool = request.stream  # type: ignore[attr-defined]
        if not stream and not msg.reply:
            raise BadRequest("a non-streamed request needs a reply subject (use request/reply)")
        now = time.time()
        deadline_ms: int | None = request.deadline_ms  # type: ignore[attr-defined]
        work = Work(
            request_id=request_id,
            kind=kind,
            model=model,
            body=msgspec.Raw(msg.data),
            stream=stream,
            reply=None if stream else msg.reply,
            accepted_at=now,
            deadline_at=now + deadline_ms / 1000 if deadline_ms else None,
            fallback_from=None if model == asked else asked,
            fallbacks=[m for m in chain if self.registry.serves(m)],
        )
        payload = encode(work)
        if len(payload) > self.nc.max_payload:
            raise PayloadTooLarge(
                f"request is too large to queue ({len(payload)} bytes with its envelope;"
                f" the server's limit is {self.nc.max_payload})"
            )
        try:
            ack = await self.js.publish(
                self.subjects.work(model),
                payload,
                timeout=_ENQUEUE_TIMEOUT_S,
                headers={"Nats-Msg-Id": request_id},
            )
        except (nats.errors.Error, JetStreamError) as exc:
            raise Unavailable(f"could not queue the request: {exc!r}") from exc
        if ack.duplicate and not stream:
            raise BadRequest(f"request_id {request_id} is already in use")
        self.log.debug("request_queued", model=model, kind=kind, duplicate=ack.duplicate)
        if not ack.duplicate:
            self._track(request_id, model)
        if stream:
            return encode(
                Accepted(
                    request_id=request_id, model=model, stream=self.subjects.stream(request_id)
                )
            )
        return None

    def _check_served(self, model: str) -> None:
        if self.registry.serves(model):
            return
        hosts = self.registry.hosts_seen()
        if any(model in h.models for h in hosts):
            raise NoHealthyHost(f"no healthy host serves {model!r} right now")
        if any(not h.up for h in hosts):
            raise NoHealthyHost(f"{model!r} is on no healthy host, and some hosts are down")
        known = sorted(self.registry.models())
        raise ModelNotFound(f"model {model!r} is not on any host; available: {', '.join(known)}")
