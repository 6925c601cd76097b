"""The router actor: decodes once, validates, picks the model, enqueues work durably."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from functools import partial

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from actors.router.admission import resolve_model, validate
from actors.router.cache import AnswerCache, cache_key
from actors.router.deadlines import Deadlines
from actors.router.queues import QueueWatch, retry_after_ms
from actors.router.selection import ModelStats, Selector, task_role
from actors.router.sharing import Generate, SharedAnswers, Ticket
from actors.router.templating import apply_template
from actors.runtime.metrics import Metrics
from bus.actor import Actor
from bus.board import Board
from bus.claims import Claims
from bus.config import Config
from bus.connection import Connection
from bus.errors import (
    BadRequest,
    ModelNotFound,
    NoHealthyHost,
    OllameshError,
    PayloadTooLarge,
    quote,
)
from bus.limits import RateLimiter
from bus.queue import QueueFull, enqueue
from bus.registry import HostRegistry
from bus.subjects import Subjects, canonical_model
from schemas import (
    Accepted,
    ChatRequest,
    GenerateRequest,
    Kind,
    QueueStats,
    Request,
    decode_request,
    encode,
)
from schemas.internal import Work, decode_event

__all__ = ["Router"]

_QUEUE = "router"
_ENQUEUE_TIMEOUT_S = 5.0
_TRACKED_MAX = 100_000
# Events remembered to tell one sent again (after a reconnection) from a new one.
_SEEN_MAX = 10_000


class Router(Actor):
    """Admission: any number of routers share the request subjects as a queue group."""

    name = "router"

    def __init__(
        self,
        nc: Connection,
        subjects: Subjects,
        config: Config,
        registry: HostRegistry,
        board: Board,
        limits: KeyValue,
        cache: KeyValue,
        metrics: Metrics,
        claims: KeyValue,
    ) -> None:
        super().__init__(nc, subjects, max_concurrent=config.router.max_concurrent)
        self.nc: Connection = nc
        self.deadlines = Deadlines(nc, subjects, Claims(claims), self.spawn)
        self.config = config
        self.registry = registry
        self.board = board
        self.metrics = metrics
        roles, routing = config.roles, config.routing
        by_model = {canonical_model(roles.get(k, k)): w for k, w in routing.weights.items()}
        self.selector = Selector(routing.strategy, by_model)
        self.candidates = list(
            dict.fromkeys(canonical_model(roles.get(c, c)) for c in routing.candidates)
        )
        self.limiter = RateLimiter(
            limits,
            {canonical_model(roles.get(k, k)): v for k, v in routing.limits.items()},
        )
        self.cache = AnswerCache(
            cache,
            memory_entries=config.cache.memory_entries,
            ttl_s=config.cache.ttl_s,
            stale_s=config.executor.total_timeout_s,
        )
        # Outcomes and latencies of every request in the fleet, from the events.
        self.stats: dict[str, ModelStats] = {}
        # This router's rate-limited requests not yet finished: id -> (model, tokens charged).
        self._charged: dict[str, tuple[str, int]] = {}
        # The latest request events, oldest first, to count each once.
        self._seen: dict[tuple[str, float], None] = {}
        self.js = nc.jetstream()
        self.queues = QueueWatch(self.js, subjects, board, metrics.queues)
        self.shared = SharedAnswers(
            nc, subjects, self.cache, limit_s=config.executor.total_timeout_s, spawn=self.spawn
        )

    async def setup(self) -> None:
        # Handlers run as soon as they are subscribed: everything they use exists already.
        for kind in Kind:
            await self.serve(self.subjects.request(kind), partial(self.admit, kind), queue=_QUEUE)
        await self.serve(self.subjects.event("request"), self._finished)
        await self.serve(self.subjects.queue_stats, self._queue_stats, queue=_QUEUE)
        await self.serve(self.subjects.cache_invalidated, self._forget)
        self.supervise("queues", self.queues.poll, endless=True)

    async def before_drain(self) -> None:
        self.deadlines.stop()

    async def _finished(self, msg: Msg) -> None:
        """Learn how a request ended, whichever router took it (for balancing and limits)."""
        event = decode_event(msg.data)
        key = (event.request_id, event.at)
        if key in self._seen:  # sent again after a reconnection: counted already
            return
        self._seen[key] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.pop(next(iter(self._seen)))
        self.metrics.finished(event)
        self.deadlines.ended(event.request_id)
        if event.outcome != "cancelled":  # the client's choice says nothing of the model
            self.stats.setdefault(event.model, ModelStats()).finished(
                event.outcome == "ok", event.latency_ms
            )
        self.queues.finished(event.model)
        if charged := self._charged.pop(event.request_id, None):
            model, tokens = charged
            used = event.prompt_tokens + event.output_tokens
            await self.limiter.settle(model, used - tokens)

    async def _queue_stats(self, msg: Msg) -> bytes:
        models = sorted(self.board.models() | self.registry.models())
        depths = [await self.queues.depth(m) for m in models]
        return encode(QueueStats(models=depths, at=time.time()))

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
        for model in served:  # the whole fleet's load: running everywhere plus waiting
            stats = self.stats.setdefault(model, ModelStats())
            stats.in_flight = self.queues.running(model) + self.queues.waiting(model)
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

    async def _within_limits(self, request: Request, model: str) -> int:
        """Reserve the request's share of the model's rate limits, waiting if it may.

        Returns the tokens charged (an estimate, settled when the request ends).
        """
        if not self.limiter.limited(model):
            return 0
        deadline_ms = request.deadline_ms
        max_wait = deadline_ms / 1000 if deadline_ms else self.config.routing.limit_wait_ms / 1000
        tokens = _estimate_tokens(request)
        wait = await self.limiter.reserve(model, tokens, max_wait)
        if wait > 0:
            self.log.info("rate_limit_wait", model=model, wait_ms=round(wait * 1000))
            await asyncio.sleep(wait)
        return tokens

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
        template = getattr(request, "prompt_template", None)
        body = msg.data
        if template:
            request = await apply_template(self.nc, self.subjects, request)  # type: ignore[arg-type]
            body = encode(request)
        validate(request, self.config.router)  # type: ignore[arg-type]
        model = resolve_model(request, self.config.roles)  # type: ignore[arg-type]
        if model is None:
            model = self._choose(request)  # type: ignore[arg-type]
        asked = model
        fallback: bool | None = request.fallback  # type: ignore[attr-defined]
        if fallback is None:  # by default only a model the fleet knows falls back
            fallback = self._known(model)
        chain = self._chain(model) if fallback else []
        while not self.registry.serves(model) and chain:
            model = chain.pop(0)
        if not self.registry.serves(model):
            self._check_served(asked)
        stream: bool = request.stream  # type: ignore[attr-defined]
        if not stream and not msg.reply:
            raise BadRequest("a non-streamed request needs a reply subject (use request/reply)")
        now = time.time()
        key = cache_key(kind, model, request)  # type: ignore[arg-type]
        leading = False  # whether identical requests follow this one
        if key is not None:
            ticket = Ticket(kind, request_id, model, stream, now, template)
            got = await self.shared.answer(key, ticket)
            if isinstance(got, bytes):
                return got
            leading = got is Generate.LEAD
        try:
            deadline_ms: int | None = request.deadline_ms  # type: ignore[attr-defined]
            charged = await self._within_limits(request, model)  # type: ignore[arg-type]
            work = Work(
                request_id=request_id,
                kind=kind,
                model=model,
                body=msgspec.Raw(body),
                stream=stream,
                reply=None if stream else msg.reply,
                priority=request.priority,  # type: ignore[attr-defined]
                accepted_at=now,
                deadline_at=now + deadline_ms / 1000 if deadline_ms else None,
                fallback_from=None if model == asked else asked,
                fallbacks=[m for m in chain if self.registry.serves(m)],
                cache_key=key,
                template=template,
            )
            try:
                seq, duplicate = await enqueue(
                    self.js,
                    self.subjects,
                    work,
                    max_payload=self.nc.max_payload,
                    msg_id=request_id,
                    timeout=_ENQUEUE_TIMEOUT_S,
                )
            except OllameshError as exc:
                if isinstance(exc, QueueFull):
                    drain = self.queues.drain_per_s(model)
                    exc.retry_after_ms = retry_after_ms(self.config.routing.queue_max, drain)
                await self._give_back(model, charged)  # it never ran
                raise
            if duplicate:
                await self._give_back(model, charged)  # the first one holds the reservation
            else:
                self.deadlines.watch(work, seq)
            if duplicate and not stream:
                raise BadRequest(f"request_id {request_id} is already in use")
            self.log.debug("request_queued", model=model, kind=kind, duplicate=duplicate)
            if not duplicate:
                self.queues.queued(model)
                if charged:
                    self._charged[request_id] = (model, charged)
                    if len(self._charged) > _TRACKED_MAX:  # events lost: forget the oldest
                        self._charged.pop(next(iter(self._charged)))
            if stream:
                return encode(
                    Accepted(
                        request_id=request_id, model=model, stream=self.subjects.stream(request_id)
                    )
                )
            return None
        except OllameshError as exc:
            if leading and key is not None:  # the identical requests following it end too
                await self.shared.abandon(key, ticket, exc)
            raise

    async def _give_back(self, model: str, charged: int) -> None:
        """Release the rate-limit reservation of a request that will not run."""
        if self.limiter.limited(model):
            await self.limiter.release(model, charged)

    async def _forget(self, msg: Msg) -> None:
        """Another process invalidated cached answers: drop them from memory too."""
        model = msg.data.decode() or None
        self.log.info("cache_forgotten", model=model, entries=self.cache.forget(model))

    def _known(self, model: str) -> bool:
        """Whether some host (up or down) has `model`, or a role names it."""
        roles = (canonical_model(m) for m in self.config.roles.values())
        return model in roles or any(model in h.models for h in self.registry.hosts_seen())

    def _check_served(self, model: str) -> None:
        if self.registry.serves(model):
            return
        hosts = self.registry.hosts_seen()
        if any(model in h.models for h in hosts):
            raise NoHealthyHost(f"no healthy host serves {quote(model)} right now")
        if any(not h.up for h in hosts):
            raise NoHealthyHost(f"{quote(model)} is on no healthy host, and some hosts are down")
        known = sorted(self.registry.models())
        raise ModelNotFound(
            f"model {quote(model)} is not on any host; available: {', '.join(known)}"
        )


def _estimate_tokens(request: Request) -> int:
    """Tokens a request will use, guessed before it runs (settled later with the truth):
    about four bytes of text per token for what it sends, plus the `num_predict` it asks."""
    texts: list[str]
    if isinstance(request, ChatRequest):
        texts = [m.content for m in request.messages]
    elif isinstance(request, GenerateRequest):
        texts = [request.prompt, request.system or ""]
    else:
        texts = [request.input] if isinstance(request.input, str) else request.input
    options = request.options
    asked = options.num_predict if options is not None and options.num_predict else 0
    return math.ceil(sum(len(t) for t in texts) / 4) + max(0, asked)
