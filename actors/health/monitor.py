"""The health monitor: checks every host, keeps the fleet view, manages models.

Hosts come from the configuration (and `OLLAMA_HOSTS`) and from the executors' entries
in the host registry, so a GPU box joins when an executor starts next to it and leaves
when its executors' heartbeats expire. Each host is checked every `health.interval_s`
its kind's way (Ollama: `/api/version`, `/api/tags`, `/api/ps`; an OpenAI-compatible
engine: `/health`, `/v1/models`, its slots), never on the generate path, and at once
when an executor reports it cannot reach the host. State changes go out on
`<prefix>.v1.events.host`; every check's result is kept in the health bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from actors.backends.admin import Admin, Check
from actors.backends.kinds import admin_for
from actors.backends.policy import FOREVER, ModelPolicy
from actors.health.autostart import LocalOllama
from actors.health.judge import judge
from actors.health.models import VERBS, ModelManager
from actors.health.pulls import Pulls
from actors.runtime.metrics import Metrics
from bus.actor import Actor
from bus.board import Board
from bus.config import Config
from bus.registry import HostRegistry
from bus.rpc import decode_body
from bus.subjects import Subjects, canonical_model, model_token
from schemas import encode
from schemas.fleet import FleetStatus, HealthQuery, HostEvent, HostHealth, HostState, ModelRow
from schemas.internal import decode_event

__all__ = ["HealthMonitor"]

# Times to first token kept per host and model for the fleet view's median ...
_TTFT_KEPT = 256
# ... and the oldest that still counts.
_TTFT_WINDOW_S = 600.0
# A failed automatic pull is not tried again on that host for this long.
_AUTO_PULL_BACKOFF_S = 600.0


@dataclass
class _Watched:
    admin: Admin
    configured: bool
    health: HostHealth | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    checked: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class HealthMonitor(Actor):
    """Checks every model host; serves the fleet view and model management."""

    name = "health"

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        config: Config,
        registry: HostRegistry,
        board: Board,
        kv: KeyValue,
        metrics: Metrics,
    ) -> None:
        super().__init__(nc, subjects)
        self.cfg = config.health
        self._role_models = {canonical_model(m) for m in config.roles.values()}
        self._connect_timeout_s = config.executor.connect_timeout_s
        # Host URLs without a trailing slash, as executors announce them, and their kinds.
        self._configured = {host.url: host.kind for host in config.host_list()}
        self._aliases = config.models.aliases
        self._registry = registry
        self._board = board
        self._kv = kv
        self._metrics = metrics
        self._policy = ModelPolicy(config)
        self._hosts: dict[str, _Watched] = {}
        self._ttft: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self._tending: set[tuple[str, str]] = set()
        self._pull_failed: dict[tuple[str, str], float] = {}
        self._local = LocalOllama()
        self._running = True
        self.pulls = Pulls(
            nc,
            subjects,
            kv,
            self.admin,
            self.spawn,
            timeout_s=self.cfg.pull_timeout_s,
            marker_ttl_s=self.cfg.entry_ttl_s,
        )
        self.manager = ModelManager(
            self,
            self.pulls,
            self._policy,
            timeout_s=self.cfg.timeout_s,
            load_timeout_s=config.executor.first_token_timeout_s,
        )

    # -- the fleet the manager acts on --------------------------------------------------

    def healths(self) -> list[HostHealth]:
        return [w.health for w in self._hosts.values() if w.health is not None]

    def admin(self, host: str) -> Admin:
        return self._hosts[host].admin

    def recheck(self, host: str) -> None:
        if (watched := self._hosts.get(host)) is not None:
            watched.wake.set()

    # -- life -----------------------------------------------------------------------------

    async def setup(self) -> None:
        self._sync_hosts()
        self.supervise("registry", self._follow_registry, endless=True)
        await self.serve(self.subjects.event("request"), self._on_request)
        await self.serve(self.subjects.health, self._on_health, queue="health")
        for verb in VERBS:
            await self.serve(self.subjects.models(verb), self.manager.handler(verb), queue="health")
        # The first view is complete before the monitor says it is running.
        first = [w.checked.wait() for w in self._hosts.values()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*first), self.cfg.timeout_s + 1.0)

    async def reconnected(self) -> None:
        """The health bucket may be new and empty: check every host now."""
        for watched in self._hosts.values():
            watched.wake.set()

    async def before_drain(self) -> None:
        self._running = False
        for watched in list(self._hosts.values()):
            if watched.task is not None:
                watched.task.cancel()

    async def teardown(self) -> None:
        for watched in list(self._hosts.values()):
            await watched.admin.close()
        await self._local.stop()

    # -- which hosts --------------------------------------------------------------------

    def _sync_hosts(self) -> None:
        """Watch the configured hosts and every host an executor announces; drop the rest."""
        reports = self._registry.hosts_seen()
        announced = {r.host for r in reports}
        kinds = {r.host: r.kind for r in reports} | self._configured
        for url in [*self._configured, *sorted(announced)]:
            if url not in self._hosts:
                self._watch(url, kinds[url], configured=url in self._configured)
        for url, watched in list(self._hosts.items()):
            if not watched.configured and url not in announced:
                self.spawn(self._forget(url))
        for report in reports:
            reported = self._hosts.get(report.host)
            health = reported.health if reported else None
            if reported and not report.up and health and health.state is HostState.UP:
                reported.wake.set()  # an executor cannot reach it: check now

    def _watch(self, url: str, kind: str, *, configured: bool) -> None:
        admin = admin_for(
            kind,
            url,
            connect_timeout=min(self._connect_timeout_s, self.cfg.timeout_s),
            aliases=self._aliases,
        )
        watched = _Watched(admin=admin, configured=configured)
        self._hosts[url] = watched
        watched.task = self.supervise("check", partial(self._check_loop, url, watched))
        self.log.info("host_watched", host=url, kind=kind, configured=configured)

    async def _forget(self, url: str) -> None:
        watched = self._hosts.pop(url, None)
        if watched is None:
            return
        if watched.task is not None:
            watched.task.cancel()
        await watched.admin.close()
        self.log.info("host_left", host=url, reason="no executor announces it any more")
        with contextlib.suppress(nats.errors.Error):
            await self._kv.delete(model_token(url))
        for state in HostState:
            with contextlib.suppress(KeyError):
                self._metrics.host_state.remove(url, state.value)

    async def _follow_registry(self) -> None:
        while self._running:
            await self._registry.changed(self.cfg.interval_s)
            if self._running:
                self._sync_hosts()

    # -- checks -------------------------------------------------------------------------

    async def _check_loop(self, url: str, watched: _Watched) -> None:
        """Check every `interval_s`, start to start, so a host that dies is seen within one
        interval; sooner when woken (an executor's failure, a change made through us)."""
        loop = asyncio.get_running_loop()
        while self._running:
            started = loop.time()
            watched.wake.clear()  # a wake during the check asks for another one
            try:
                await self._check(url, watched)
            except Exception as exc:  # one bad answer must not end the host's checks
                self.log.warning("check_failed", host=url, error=repr(exc))
            watched.checked.set()
            left = started + self.cfg.interval_s - loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watched.wake.wait(), max(left, 0.0))

    async def _check(self, url: str, watched: _Watched) -> None:
        check = await watched.admin.check(self.cfg.timeout_s)
        reports = [r for r in self._registry.hosts_seen() if r.host == url]
        state, reason = judge(check, reports, self.cfg.slow_ms)
        previous = watched.health
        now = time.time()
        health = HostHealth(
            host=url,
            state=state,
            kind=watched.admin.kind,
            reason=reason,
            version=check.version or (previous.version if previous else ""),
            models=_known(check.models, previous.models if previous else []),
            loaded=_known(check.loaded, previous.loaded if previous else []),
            latency_ms=check.latency_ms if check.reachable else None,
            slots=check.slots,
            busy=check.busy,
            executors=sorted(r.executor for r in reports),
            checked_at=now,
            since=previous.since if previous and previous.state is state else now,
        )
        watched.health = health
        for each in HostState:
            self._metrics.host_state.labels(url, each.value).set(1 if each is state else 0)
        if previous is None or previous.state is not state:
            await self._changed(health, previous.state if previous else None)
        try:
            await self._kv.put(model_token(url), encode(health))
        except nats.errors.Error as exc:
            self.log.warning("health_not_stored", host=url, error=repr(exc))
        if state is HostState.DOWN:
            if self.cfg.auto_start and watched.configured and await self._local.start(url):
                watched.wake.set()
        elif state is not HostState.LOADING:
            came_up = previous is None or previous.state in (HostState.DOWN, HostState.LOADING)
            self._tend(url, watched.admin, check, came_up=came_up)

    async def _changed(self, health: HostHealth, previous: HostState | None) -> None:
        level = "info" if health.state is HostState.UP else "warning"
        getattr(self.log, level)(
            "host_state",
            host=health.host,
            state=health.state.value,
            previous=previous.value if previous else None,
            reason=health.reason,
        )
        event = HostEvent(
            host=health.host,
            state=health.state,
            previous=previous,
            reason=health.reason,
            at=health.checked_at,
        )
        await self.nc.publish(self.subjects.event("host"), encode(event))

    # -- pins and automatic pulls -------------------------------------------------------

    def _tend(self, url: str, admin: Admin, check: Check, *, came_up: bool) -> None:
        """Load pinned models that are not in memory (and, on a host that just came up,
        the models to warm); pull role models the host lacks."""
        stored = {m.name for m in check.models or []}
        loaded = {m.name for m in check.loaded or []}
        if check.loaded is not None:
            pinned = self._policy.pinned_models
            for model in pinned & (stored - loaded):
                self._once(url, model, self._load(url, model, FOREVER))
            if came_up:
                for model in (self._policy.warm_models - pinned) & (stored - loaded):
                    self._once(url, model, self._load(url, model, None))
        if self.cfg.auto_pull and admin.pulls_models and check.models is not None:
            backoff_after = time.monotonic() - _AUTO_PULL_BACKOFF_S
            for model in sorted(self._role_models - stored):
                if self._pull_failed.get((url, model), -1e18) < backoff_after:
                    self._once(url, model, self._auto_pull(url, model))

    def _once(self, url: str, model: str, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` unless a pin or pull of `model` on `url` is under way already."""
        key = (url, model)
        if key in self._tending or self.pulls.running(url, model):
            work.close()
            return
        self._tending.add(key)
        task = self.spawn(work)
        task.add_done_callback(lambda _: self._tending.discard(key))

    async def _load(self, url: str, model: str, keep_alive: int | None) -> None:
        """Pin (`keep_alive` forever) or warm (Ollama's default keep_alive) a model."""
        what = "pinned" if keep_alive == FOREVER else "warmed"
        try:
            await self.manager.load(url, model, keep_alive)
        except Exception as exc:
            self.log.warning(f"model_not_{what}", host=url, model=model, error=repr(exc))
            return
        self.log.info(f"model_{what}", host=url, model=model)
        self.recheck(url)

    async def _auto_pull(self, url: str, model: str) -> None:
        try:
            await self.pulls.pull(url, model)
        except Exception as exc:
            self._pull_failed[(url, model)] = time.monotonic()
            self.log.warning("auto_pull_failed", host=url, model=model, error=repr(exc))
            return
        self.recheck(url)

    # -- the fleet view -----------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            return
        if event.ttft_ms is None or not event.host or event.cached:
            return
        key = (event.host, event.model)
        if key not in self._ttft:
            self._ttft[key] = deque(maxlen=_TTFT_KEPT)
        self._ttft[key].append((time.monotonic(), event.ttft_ms))

    def _ttft_p50(self, host: str, model: str) -> float | None:
        since = time.monotonic() - _TTFT_WINDOW_S
        recent = [ms for at, ms in self._ttft.get((host, model), ()) if at >= since]
        return round(statistics.median(recent), 3) if recent else None

    async def _on_health(self, msg: Msg) -> bytes:
        decode_body(HealthQuery, msg.data, "health")
        return encode(self.status())

    def status(self) -> FleetStatus:
        """Every host and, per host, every model it has or serves."""
        hosts = sorted(self.healths(), key=lambda h: h.host)
        loads = {(entry.host, model): load for entry in self._board.hosts()
                 for model, load in entry.models.items()}  # fmt: skip
        reports = self._registry.hosts_seen()
        rows: list[ModelRow] = []
        for health in hosts:
            # Only executors that reach the host serve it: a down host's circuits are moot.
            mine = [r for r in reports if r.host == health.host and r.up]
            served = {m for r in mine for m in r.models}
            blocked = {m for r in mine for m in r.blocked}
            vram = {m.name: m.size_vram for m in health.loaded}
            names = {m.name for m in health.models} | served
            for model in sorted(names):
                load = loads.get((health.host, model))
                circuit = "open" if model in blocked else "closed" if model in served else "none"
                rows.append(
                    ModelRow(
                        host=health.host,
                        model=model,
                        # The last check's `/api/ps`, or the executor's fresher word.
                        loaded=model in vram or (load is not None and load.warm),
                        size_vram=vram.get(model, 0),
                        in_flight=load.in_flight if load else 0,
                        slots=load.slots if load else 0,
                        ttft_ms_p50=self._ttft_p50(health.host, model),
                        circuit=circuit,
                    )
                )
        return FleetStatus(hosts=hosts, rows=rows, at=time.time())


T = TypeVar("T")


def _known(fresh: list[T] | None, before: list[T]) -> list[T]:
    """What a check learnt, or (if that call failed) what the last check did."""
    return fresh if fresh is not None else before
