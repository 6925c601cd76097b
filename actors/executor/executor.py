"""The executor actor: one per model host; pulls work for its models and streams answers."""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import socket
import time

from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from actors.backends.kinds import backend_for
from actors.backends.policy import ModelPolicy
from actors.executor.circuit import Circuit
from actors.executor.emit import Emitter, StreamEnded
from actors.executor.host import HostState
from actors.executor.puller import FETCH_EXPIRY_S, Puller, Tally
from actors.executor.serving import Serving
from actors.executor.slots import ModelSlots
from actors.runtime.metrics import Metrics
from bus.actor import Actor
from bus.board import Board
from bus.claims import Claims
from bus.config import Config, HostConfig
from bus.connection import CRASH_WINDOW_S, Connection
from bus.registry import HostRegistry
from bus.subjects import Subjects, model_token

__all__ = ["Executor"]

# Cancels are remembered this long, so work cancelled while queued is dropped when taken.
_CANCEL_MEMORY_S = 600.0
# Streams read back at once after a reconnection.
_RESYNCS_AT_ONCE = 32


class Executor(Serving, ModelSlots, HostState, Actor):
    """Serves one model host (Ollama, or an OpenAI-compatible engine, through its
    backend): learns its models, pulls their work, streams the answers.

    Its parts, one job each: `HostState` (host.py: the host, its load on the board),
    `ModelSlots` (slots.py: pullers and circuits per model), `Serving` (serving.py: one
    request, with retries, fallbacks and hand-back); here the state they share, the
    actor's lifecycle, cancels and reconnections.
    """

    name = "executor"

    def __init__(
        self,
        nc: Connection,
        subjects: Subjects,
        config: Config,
        host: HostConfig,
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
        self.host_url = host.url.rstrip("/")
        # Set in the configuration, else what the engine says at the first check.
        self._slots_set = host.slots
        self._slots = host.slots or self.cfg.max_inflight_per_model
        self.host = backend_for(
            host.kind,
            self.host_url,
            connect_timeout=self.cfg.connect_timeout_s,
            aliases=config.models.aliases,
        )
        self.executor_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.log = self.log.bind(host=self.host_url)
        self.discovery.metadata["host"] = self.host_url
        self.discovery.metadata["kind"] = host.kind
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
