"""The executor actor: one per Ollama host; pulls work for its models and streams answers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from actors.backends.ollama import HostUnavailable, Line, OllamaClient, StreamTimeouts
from actors.backends.policy import ModelPolicy
from actors.executor.circuit import Circuit, CircuitState
from actors.executor.emit import Emitter, NotStored, StreamEnded
from actors.executor.puller import FETCH_EXPIRY_S, Puller, Tally
from actors.executor.redelivery import Redelivery, judge_redelivery
from actors.runtime.metrics import Metrics
from bus.actor import Actor, reply_error
from bus.board import HEARTBEAT_S, Board
from bus.claims import ROUTER, Claims
from bus.config import Config
from bus.connection import CRASH_WINDOW_S, Connection
from bus.errors import (
    Cancelled,
    Internal,
    ModelNotFound,
    OllameshError,
    PayloadTooLarge,
    Timeout,
    UpstreamError,
)
from bus.queue import enqueue
from bus.registry import HostRegistry
from bus.subjects import Subjects, model_token
from schemas import (
    Answer,
    CacheStore,
    HostInfo,
    HostLoad,
    Kind,
    RequestEvent,
    Work,
    decode_request,
    decode_work,
    encode,
    without_routing,
)
from schemas.answers import STAT_FIELDS, done_of, result_of

__all__ = ["Executor"]

_PATHS = {Kind.GENERATE: "/api/generate", Kind.CHAT: "/api/chat", Kind.EMBED: "/api/embed"}
# Cancels are remembered this long, so work cancelled while queued is dropped when taken.
_CANCEL_MEMORY_S = 600.0
# Load changes are published at most this often (the first at once).
_BOARD_MIN_INTERVAL_S = 0.002
# Keep-alives sent within one ack wait: one lost still leaves three to arrive in time.
_KEEPALIVES_PER_ACK_WAIT = 4
# A stopping executor's longest try to hand back or end one request.
_HAND_BACK_S = 2.0
# Finished streams kept to complete after a reconnection (those that ended within the
# crash window before the drop), and how many are read back at once.
_FINISHED_KEEP_S = 5.0
_RESYNCS_AT_ONCE = 32


def _stats(line: Line) -> dict[str, Any]:
    """Ollama's figures from its final line, under Ollama's names."""
    return {name: getattr(line, name) for name in STAT_FIELDS}


def _ollama_body(work: Work, policy: ModelPolicy) -> bytes:
    """The request as Ollama takes it: the resolved model, our own fields left out.

    Generation is always streamed from the host, even for a non-streamed client request,
    so the first-token and idle deadlines hold. The model's load-time options and its pin
    override the client's, so no request makes Ollama reload or unload a shared model.
    """
    request = decode_request(work.kind, work.body)
    return encode(
        without_routing(
            request,
            model=work.model,
            stream=work.kind is not Kind.EMBED,
            options=policy.options(work.model, request.options),
            keep_alive=policy.keep_alive(work.model, request.keep_alive),
        )
    )


class Executor(Actor):
    """Serves one Ollama host: learns its models, pulls their work, streams the answers."""

    name = "executor"

    def __init__(
        self,
        nc: Connection,
        subjects: Subjects,
        config: Config,
        host_url: str,
        registry: HostRegistry,
        board: Board,
        metrics: Metrics,
        claims: KeyValue,
    ) -> None:
        super().__init__(nc, subjects)
        self._claims = Claims(claims)
        self.cfg = config.executor
        self._routing = config.routing
        self._policy = ModelPolicy(config)
        self._board = board
        self._metrics = metrics
        self.host_url = host_url.rstrip("/")
        per_host = {url.rstrip("/"): n for url, n in self.cfg.host_slots.items()}
        self._slots = per_host.get(self.host_url, self.cfg.max_inflight_per_model)
        self.host = OllamaClient(self.host_url, connect_timeout=self.cfg.connect_timeout_s)
        self.executor_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.log = self.log.bind(host=self.host_url)
        self.discovery.metadata["host"] = self.host_url
        self._registry = registry
        self._key = model_token(self.executor_id)
        self._pullers: dict[str, Puller] = {}
        self._tallies: dict[str, Tally] = {}
        self._dirty = asyncio.Event()
        self.nc: Connection = nc
        self._running: dict[str, asyncio.Task[None]] = {}
        self._emitters: dict[str, Emitter] = {}
        self._finished: collections.deque[tuple[float, Emitter]] = collections.deque()
        # Requests whose stream someone else ended: their task stops, sending nothing.
        self._superseded: set[str] = set()
        self._cancelled: dict[str, float] = {}
        self._accepting = True
        self._up = False
        self._checked = False
        self._known: list[str] = []
        self._version = ""
        self._failures = 0
        self._paused_until = 0.0
        self._wake = asyncio.Event()
        self._circuits: dict[str, Circuit] = {}
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def models(self) -> list[str]:
        """Models this executor currently pulls work for."""
        return sorted(self._pullers)

    @property
    def up(self) -> bool:
        return self._up

    async def setup(self) -> None:
        self.js = self.nc.jetstream()
        await self.serve(self.subjects.cancels, self._on_cancel)
        await self.refresh()
        self.supervise("refresh", self._maintain)
        self.supervise("board", self._publish_loads)

    # -- host state -------------------------------------------------------------------

    async def refresh(self) -> None:
        """Ask the host what it has; start or stop pulling per model; announce it."""
        timeout = self.cfg.connect_timeout_s + 3.0
        try:
            self._version = await self.host.version(timeout)
            models = await self.host.models(timeout)
            loaded = await self._loaded(timeout)
        except HostUnavailable as exc:
            if self._up or not self._checked:
                self.log.warning("host_down", error=exc.message)
            self._up = False
            self._checked = True
            # Stop pulling so the work goes to hosts that are up at once.
            for model in list(self._pullers):
                self._stop_model(model)
            await self._announce()
            return
        if not self._up:
            self.log.info("host_up", version=self._version, models=models)
        self._up = self._checked = True
        self._failures = 0
        self._known = sorted(models)
        for model in set(self._pullers) - set(models):
            self._stop_model(model)
        for model in set(models) - set(self._pullers):
            if self.circuit(model).state is CircuitState.CLOSED:
                await self._start_model(model)
        if loaded is not None:
            for model, tally in self._tallies.items():
                tally.warm = model in loaded
        self._load_changed()
        await self._announce()

    async def _loaded(self, timeout: float) -> set[str] | None:
        """The models in the host's memory; None (warmth unchanged) if `/api/ps` fails."""
        try:
            return set(await self.host.loaded(timeout))
        except HostUnavailable:
            raise
        except OllameshError as exc:
            self.log.warning("ps_failed", error=exc.message)
            return None

    async def _announce(self) -> None:
        info = HostInfo(
            host=self.host_url,
            executor=self.executor_id,
            models=self._known,
            # Half-open models are not blocked: the router must let the probe request in.
            blocked=sorted(m for m, c in self._circuits.items() if c.state is CircuitState.OPEN),
            version=self._version,
            up=self._up,
            at=time.time(),
        )
        try:
            await self._registry.announce(self._key, info)
        except Exception as exc:
            self.log.warning("announce_failed", error=repr(exc))

    async def _maintain(self) -> None:
        while self._accepting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.tags_refresh_s)
            self._wake.clear()
            if not self._accepting:
                return
            try:
                await self.refresh()
            except Exception as exc:  # a host answering nonsense must not stop the checks
                self.log.warning("refresh_failed", error=repr(exc))

    def _note_failure(self) -> float:
        """Back off this host after a failure before the first token; return the pause."""
        self._failures += 1
        pause = min(
            self.cfg.retry_backoff_max_ms, self.cfg.retry_backoff_ms * 2 ** (self._failures - 1)
        )
        self._paused_until = asyncio.get_running_loop().time() + pause / 1000
        self._wake.set()  # check now whether the host is down, rather than at the next poll
        return pause / 1000

    # -- pulling work -----------------------------------------------------------------

    def circuit(self, model: str) -> Circuit:
        """This host's circuit for `model`."""
        if model not in self._circuits:
            self._circuits[model] = Circuit(
                self.cfg.circuit_failures,
                self.cfg.circuit_cooldown_s,
                window_s=self.cfg.circuit_window_s,
            )
        return self._circuits[model]

    def _host_failed(self, model: str) -> None:
        """Count a failure of the host on `model`; stop pulling its work if the circuit opens."""
        self._tallies[model].finished(ok=False)
        circuit = self.circuit(model)
        first = circuit.failures == 0
        if circuit.failure():
            self._open(model, circuit)
        elif first:  # open it if the failures that began now go on for the whole window
            self._later(circuit.window_s, lambda: circuit.expired() and self._open(model, circuit))

    def _open(self, model: str, circuit: Circuit) -> None:
        self.log.warning(
            "circuit_open", model=model, failures=circuit.failures, cooldown_s=circuit.cooldown_s
        )
        self._stop_model(model)
        delay = max(0.0, circuit.probe_at - time.monotonic())
        self._later(delay, lambda: self.spawn(self._probe(model, circuit)))
        self.spawn(self._announce())

    def _later(self, delay: float, callback: Callable[[], object]) -> None:
        """Run `callback` after `delay` seconds unless the executor stops first."""

        def fire() -> None:
            self._timers.discard(timer)
            if self._accepting:
                callback()

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)

    async def _host_served(self, model: str, service_ms: float) -> None:
        """Count a success; a successful probe closes the circuit and reopens every slot."""
        self._tallies[model].finished(ok=True, service_ms=service_ms)
        if self.circuit(model).success() and self._accepting:
            self.log.info("circuit_closed", model=model)
            await self._start_model(model)
            await self._announce()

    async def _probe(self, model: str, circuit: Circuit) -> None:
        """The cooldown is over: pull exactly one request for `model` as the probe."""
        if self._accepting and circuit.try_probe():
            self.log.info("circuit_probe", model=model)
            await self._start_model(model, slots=1)
            await self._announce()

    async def _start_model(self, model: str, slots: int | None = None) -> None:
        if model not in self._tallies:
            # A host joining late starts level with its peers, or round-robin would send
            # it everything until it caught up.
            level = min((p.taken for p in self._board.loads(model).values()), default=0)
            self._tallies[model] = Tally(taken=level)
        puller = Puller(
            js=self.js,
            subjects=self.subjects,
            model=model,
            slots=slots or self._slots,
            tally=self._tallies[model],
            me=self.executor_id,
            board=self._board,
            strategy=self._routing.host_strategy,
            cold_after_s=self._routing.cold_after_ms / 1000,
            serve=self._take,
            spawn=self.spawn,
            supervise=self.supervise,
            paused=self._pause_left,
            changed=self._load_changed,
            ack_wait_s=self.cfg.ack_wait_s,
            log=self.log,
        )
        if old := self._pullers.get(model):  # a closed circuit reopens every slot
            old.stop()
        self._pullers[model] = puller
        await puller.start()
        self._load_changed()
        self.log.info("model_serving", model=model, slots=puller.slots)

    def _stop_model(self, model: str) -> None:
        """Withdraw the model's slots: each ends after its pull expires, handing back work."""
        if puller := self._pullers.pop(model, None):
            puller.stop()
            self._load_changed()
            self.log.info("model_withdrawn", model=model)

    def _pause_left(self) -> float:
        return self._paused_until - asyncio.get_running_loop().time()

    def _load_changed(self) -> None:
        self._dirty.set()

    def _load(self) -> HostLoad:
        return HostLoad(
            executor=self.executor_id,
            host=self.host_url,
            models={m: p.load() for m, p in self._pullers.items()},
            serving=sorted(self._running),
            at=time.time(),
        )

    async def _publish_loads(self) -> None:
        """Put this host's load on the board on every change (coalesced) and as a heartbeat."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), HEARTBEAT_S)
            self._dirty.clear()
            load = self._load()
            self._measure(load)
            try:
                await self._board.publish(load)
            except Exception as exc:
                self.log.warning("board_publish_failed", error=repr(exc))
            if not self._accepting and not self._pullers:
                return
            await asyncio.sleep(_BOARD_MIN_INTERVAL_S)

    def _measure(self, load: HostLoad) -> None:
        m = self._metrics
        m.host_up.labels(self.host_url).set(1 if self._up else 0)
        for model in self._tallies:
            entry = load.models.get(model)
            m.in_flight.labels(self.host_url, model).set(self._tallies[model].in_flight)
            m.slots.labels(self.host_url, model).set(entry.slots if entry else 0)

    async def _take(self, msg: Msg) -> None:
        try:
            work = decode_work(msg.data)
        except msgspec.DecodeError as exc:
            self.log.error("work_unreadable", error=str(exc))
            await msg.term()
            return
        if work.request_id in self._running:
            # Delivered again while this executor still serves it (a restart made the
            # server forget its keep-alives): the running task acknowledges it.
            self.log.info("redelivery_left_to_owner", request_id=work.request_id, owner="self")
            return
        task = self.spawn(self._serve(work, msg, msg.metadata.num_delivered))
        self._running[work.request_id] = task
        self._load_changed()
        try:
            await asyncio.wait({task})
        finally:
            self._running.pop(work.request_id, None)
            if emitter := self._emitters.pop(work.request_id, None):
                self._keep(emitter)
            self._superseded.discard(work.request_id)
            self._load_changed()

    def _keep(self, emitter: Emitter) -> None:
        """Keep a finished stream a while: its last messages left without a round trip,
        and a server dying right then loses them; `reconnected` sends them again."""
        now = time.monotonic()
        self._finished.append((now, emitter))
        while (
            self.nc.is_connected
            and self._finished
            and self._finished[0][0] < now - _FINISHED_KEEP_S
        ):
            self._finished.popleft()

    # -- serving one request ----------------------------------------------------------

    async def _serve(self, work: Work, msg: Msg, attempt: int) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        rid = work.request_id
        # This task's own context: every line logged while serving it names the request,
        # whichever module logs it.
        structlog.contextvars.bind_contextvars(request_id=rid)
        log = self.log.bind(model=work.model, attempt=attempt)
        emitter = Emitter(
            self.nc,
            self.js,
            self.subjects.chunk_stream,
            self.subjects.stream(rid),
            rid,
            window_s=self.cfg.coalesce_ms / 1000,
            # A cacheable answer is streamed even to a non-streamed client: identical
            # requests that arrive meanwhile follow it (single-flight).
            publish=work.stream or work.cache_key is not None,
        )
        self._emitters[rid] = emitter
        keepalive = loop.create_task(self._keep_alive(msg, log))
        failure: OllameshError | None = None
        last = Line()
        calling = False  # failures while the host works count against its circuit
        try:
            if attempt > 1 and not await self._take_over(work, msg, emitter, log):
                return
            if work.model not in self._pullers:
                # The model was withdrawn (its circuit opened) while this work waited.
                log.info("request_handed_back", reason="model withdrawn")
                await self._release(work)
                await msg.nak()
                return
            if not await self._claim(work, msg, log):
                return
            await self._check_admissible(work)
            body = _ollama_body(work, self._policy)
            timeouts = self._timeouts(work)
            path = _PATHS[work.kind]
            calling, called = True, loop.time()
            if work.kind is Kind.EMBED:
                last = await self.host.call(path, body, work.model, timeouts.total)
            else:
                async for lines in self.host.stream(path, body, work.model, timeouts):
                    await emitter.add(lines)
                    last = lines[-1]
            calling = False
            self._failures = 0
            # The host's own speed: a model load is the warm-up's cost, not the host's.
            service_ms = (loop.time() - called) * 1000 - (last.load_duration or 0) / 1e6
            await self._host_served(work.model, max(service_ms, 0.0))
            await self._deliver(work, emitter, last)
        except (StreamEnded, asyncio.CancelledError) as exc:
            if rid in self._superseded or isinstance(exc, StreamEnded):
                # Someone else ended the stream (a retry elsewhere while we were cut off):
                # send nothing more, and leave the work and its event to them.
                log.warning("request_superseded")
                if isinstance(exc, asyncio.CancelledError):
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                return
            if rid not in self._cancelled:
                await self._hand_back(work, msg, emitter, log)
                raise
            # The client's cancel ends this request normally; the task goes on to report it.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            failure = Cancelled("cancelled by the client", request_id=rid)
        except NotStored:
            # NATS was out of reach for the whole wait: the work stays unacknowledged,
            # so it is delivered again and the stream ended then.
            log.error("request_end_not_stored")
            return
        except (HostUnavailable, ModelNotFound) as exc:
            if isinstance(exc, HostUnavailable):
                self._host_failed(work.model)
            if emitter.started or attempt >= self.cfg.max_attempts:
                failure = exc
            else:
                await self._retry(work, msg, exc, log)
                return
        except OllameshError as exc:
            if calling and isinstance(exc, UpstreamError | Timeout):
                self._host_failed(work.model)
            failure = exc
            if calling and isinstance(exc, Timeout) and not emitter.started and work.fallbacks:
                failure = await self._fall_back(work, msg, log)
                if failure is None:
                    return
        except Exception as exc:
            log.exception("serve_crashed")
            failure = Internal(f"executor failed: {exc!r}")
        finally:
            keepalive.cancel()
            emitter.close()
        if failure is not None:
            log.warning("request_failed", code=failure.code, error=failure.message)
            try:
                await self._fail(work, emitter, failure)
            except StreamEnded:
                log.warning("request_superseded")
                return
            except NotStored:
                log.error("request_end_not_stored")
                return
        else:
            log.debug("request_done", chunks=emitter.seq)
        await msg.ack()
        await self._emit_event(work, emitter, last, failure, attempt, started)

    async def _take_over(
        self, work: Work, msg: Msg, emitter: Emitter, log: structlog.BoundLogger
    ) -> bool:
        """Work delivered again: whether to serve it (True), or leave it as judged."""
        rid = work.request_id
        verdict, stored = await judge_redelivery(
            self._board,
            self.js,
            stream=self.subjects.chunk_stream,
            subject=self.subjects.stream(rid),
            request_id=rid,
            published=emitter.publishing,
            me=self.executor_id,
        )
        match verdict:
            case Redelivery.OWNED:
                log.info("redelivery_left_to_owner")
                return False
            case Redelivery.ENDED:
                log.info("redelivery_already_ended")
                await msg.ack()
                return False
            case Redelivery.BROKEN:
                # Tokens already reached the client from an executor that is gone: never
                # restart the answer under the same seq numbers; end it after them.
                emitter.continue_after(stored)
                raise UpstreamError("the host serving this request stopped mid-stream")
        return True

    async def _claim(self, work: Work, msg: Msg, log: structlog.BoundLogger) -> bool:
        """A request with a deadline is ended by whoever claims it first: this executor
        (it serves it, and stops at the deadline) or its router (at the deadline, while
        it was still queued). False when the router did: the work is dropped unsent."""
        if work.deadline_at is None:
            return True
        if await self._claims.claim(work.request_id, self.executor_id) != ROUTER:
            return True
        log.info("request_expired_in_queue", by="router")
        await msg.ack()
        return False

    async def _check_admissible(self, work: Work) -> None:
        if work.request_id in self._cancelled:
            raise Cancelled("cancelled while queued", request_id=work.request_id)
        if work.deadline_at is not None and time.time() >= work.deadline_at:
            raise Timeout("the deadline passed while the request was queued")

    def _timeouts(self, work: Work) -> StreamTimeouts:
        total = self.cfg.total_timeout_s
        if work.deadline_at is not None:
            total = min(total, work.deadline_at - time.time())
        return StreamTimeouts(
            first_token=min(total, self.cfg.first_token_timeout_s),
            idle=self.cfg.idle_timeout_s,
            total=total,
        )

    async def _keep_alive(self, msg: Msg, log: structlog.BoundLogger) -> None:
        """Tell JetStream the work is still being served, so it is not redelivered.

        The keep-alives are the executor's heartbeat for this request: when they stop
        (the process died), the work is delivered again within `ack_wait_s`.
        """
        while True:
            await asyncio.sleep(self.cfg.ack_wait_s / _KEEPALIVES_PER_ACK_WAIT)
            try:
                await msg.in_progress()
            except nats.errors.Error as exc:  # down for now: the next one may get through
                log.debug("keepalive_failed", error=repr(exc))

    def _answer(self, work: Work, emitter: Emitter, last: Line) -> Answer:
        return Answer(
            kind=work.kind,
            model=work.model,
            host=self.host_url,
            text="".join(emitter.text),
            thinking="".join(emitter.thinking) or None,
            tool_calls=emitter.tool_calls or None,
            embeddings=last.embeddings,
            fallback_from=work.fallback_from,
            **_stats(last),
        )

    async def _deliver(self, work: Work, emitter: Emitter, last: Line) -> None:
        answer = self._answer(work, emitter, last)
        result = None
        if not work.stream and work.reply is not None:
            result = encode(result_of(answer, work.request_id))
            if len(result) > self.nc.max_payload:  # the server would refuse it
                raise PayloadTooLarge(
                    f"the answer is {len(result)} bytes, over the server's max_payload of"
                    f" {self.nc.max_payload}: ask for it streamed"
                )
        if emitter.publishing:
            await emitter.finish(done_of(answer, work.request_id))
        if result is not None and work.reply is not None:
            await self.nc.publish(work.reply, result)
        if work.cache_key is not None:
            # Captured by the event stream: the cache actor keeps it, even if it is down now.
            store = CacheStore(key=work.cache_key, answer=answer, at=time.time())
            try:
                await self.nc.publish(self.subjects.event("cache"), encode(store))
            except nats.errors.MaxPayloadError:
                self.log.warning("answer_not_cached", reason="larger than max_payload")

    async def _fail(self, work: Work, emitter: Emitter, failure: OllameshError) -> None:
        if emitter.publishing:
            await emitter.finish(failure.to_wire(work.request_id))
        if not work.stream and work.reply:
            await reply_error(self.nc, work.reply, failure, work.request_id)

    async def _fall_back(
        self, work: Work, msg: Msg, log: structlog.BoundLogger
    ) -> OllameshError | None:
        """The model gave no first token in time: queue the work for its next fallback.

        Returns the error to end the request with if the fallback's queue refused it.
        """
        model, rest = work.fallbacks[0], work.fallbacks[1:]
        moved = msgspec.structs.replace(
            work, model=model, fallbacks=rest, fallback_from=work.fallback_from or work.model
        )
        try:
            await enqueue(
                self.js,
                self.subjects,
                moved,
                max_payload=self.nc.max_payload,
                msg_id=f"{work.request_id}.{model_token(model)}",
            )
        except OllameshError as exc:
            log.warning("request_fallback_failed", to=model, error=exc.message)
            return exc
        log.warning("request_fallback", to=model)
        await msg.ack()
        return None

    async def _retry(
        self, work: Work, msg: Msg, exc: OllameshError, log: structlog.BoundLogger
    ) -> None:
        """Put the work back for any host, and rest this one a little."""
        pause = self._note_failure()
        log.warning("request_retry", error=exc.message, backoff_s=pause)
        await self._release(work)
        await msg.nak(delay=pause)

    async def _release(self, work: Work) -> None:
        """No longer serving `work` (about to hand it back): say so on the board first,
        so the executor it is delivered to next does not leave it to this one."""
        self._running.pop(work.request_id, None)
        try:
            await self._board.publish(self._load())
        except Exception as exc:
            self.log.warning("board_publish_failed", error=repr(exc))

    async def _hand_back(
        self, work: Work, msg: Msg, emitter: Emitter, log: structlog.BoundLogger
    ) -> None:
        """The executor is stopping: return unstarted work, end started streams cleanly.

        Within `_HAND_BACK_S`: with NATS out of reach the work stays unacknowledged, and
        is delivered again (and ended there) within `ack_wait_s`.
        """
        try:
            async with asyncio.timeout(_HAND_BACK_S):
                if not emitter.started:
                    log.info("request_handed_back")
                    await self._release(work)
                    await msg.nak()
                    return
                failure = UpstreamError(
                    "the executor stopped mid-stream", request_id=work.request_id
                )
                await self._fail(work, emitter, failure)
                await msg.ack()
        except (TimeoutError, nats.errors.Error, StreamEnded, NotStored) as exc:
            log.warning("request_not_handed_back", error=repr(exc))

    async def _emit_event(
        self,
        work: Work,
        emitter: Emitter,
        last: Line,
        failure: OllameshError | None,
        attempt: int,
        started: float,
    ) -> None:
        event = RequestEvent(
            request_id=work.request_id,
            kind=work.kind,
            model=work.model,
            host=self.host_url,
            outcome="ok" if failure is None else failure.code,
            latency_ms=round((time.time() - work.accepted_at) * 1000, 3),
            ttft_ms=(
                round((emitter.first_token_at - started) * 1000, 3)
                if emitter.first_token_at is not None
                else None
            ),
            prompt_tokens=last.prompt_eval_count,
            output_tokens=last.eval_count,
            attempt=attempt,
            fallback_from=work.fallback_from,
            template=work.template,
            at=time.time(),
        )
        # Once (the request id is the message id: a request that somehow ends twice is
        # recorded once), and again after a reconnection.
        await self.nc.publish_once(
            self.subjects.event("request"), encode(event), msg_id=work.request_id
        )

    # -- cancels and shutdown ---------------------------------------------------------

    async def _on_cancel(self, msg: Msg) -> None:
        request_id = msg.subject.rsplit(".", 1)[-1]
        now = time.monotonic()
        self._cancelled[request_id] = now
        if len(self._cancelled) > 4096:
            self._cancelled = {
                k: t for k, t in self._cancelled.items() if now - t < _CANCEL_MEMORY_S
            }
        if task := self._running.get(request_id):
            self.log.info("request_cancelling", request_id=request_id)
            task.cancel()

    async def stop(self, grace: float = 30.0) -> None:
        """Stop as every actor does, but never before the slots' pull requests expired.

        A slot cancelled while its pull request is still alive at the server would leave
        any work delivered to it waiting for ack_wait; given the expiry, each slot ends
        by itself and hands such work back.
        """
        await super().stop(max(grace, FETCH_EXPIRY_S + 0.5))

    async def reconnected(self) -> None:
        """After a reconnection: announce again, and complete every stream in flight."""
        self._wake.set()
        for puller in list(self._pullers.values()):
            await puller.ensure_consumers()
        since = self.nc.dropped_at - CRASH_WINDOW_S
        finished = [e for at, e in self._finished if at >= since]
        limit = asyncio.Semaphore(_RESYNCS_AT_ONCE)

        async def resync(emitter: Emitter) -> None:
            rid = emitter.request_id
            try:
                async with limit:
                    await emitter.resync()
            except StreamEnded:
                if task := self._running.get(rid):
                    self._superseded.add(rid)
                    task.cancel()
            except Exception:
                self.log.exception("stream_resync_failed", request_id=rid)

        await asyncio.gather(*(resync(e) for e in [*self._emitters.values(), *finished]))

    async def before_drain(self) -> None:
        self._accepting = False
        for timer in self._timers:
            timer.cancel()
        for model in list(self._pullers):
            self._stop_model(model)
        self._wake.set()

    async def teardown(self) -> None:
        if self.nc.is_connected:  # otherwise the entry expires with the registry's TTL
            await self._registry.withdraw(self._key)
        await self.host.close()
