"""The executor's view of its host: what it has and has loaded, whether it answers, how
many requests it takes, how loaded it is (on the load board), and the pause after a
failure."""

from __future__ import annotations

import asyncio
import contextlib
import time

from actors.backends.http import HostLoading, HostUnavailable
from actors.executor.circuit import CircuitState
from bus.board import HEARTBEAT_S
from schemas.internal import HostInfo, HostLoad

__all__ = ["HostState"]


# Load changes are published at most this often (the first at once).
_BOARD_MIN_INTERVAL_S = 0.002


class HostState:
    """A part of `Executor` (its state is set up in `Executor.__init__`): the host itself."""

    async def refresh(self) -> None:
        """Ask the host what it has; start or stop pulling per model; announce it."""
        timeout = self.cfg.connect_timeout_s + 3.0
        try:
            self._version = await self.host.health(timeout)
            catalogue = await self.host.models(timeout)
            capacity = await self.host.capacity(timeout)
        except HostUnavailable as exc:
            if self._up or not self._checked:
                loading = isinstance(exc, HostLoading)
                self.log.warning("host_loading" if loading else "host_down", error=exc.message)
            self._up = False
            self._checked = True
            # Stop pulling so the work goes to hosts that are up at once.
            for model in list(self._pullers):
                self._stop_model(model)
            await self._announce()
            return
        if catalogue.problem is not None:
            self.log.warning("ps_failed", error=catalogue.problem)
        models = catalogue.models
        if not self._up:
            self.log.info("host_up", version=self._version, models=models, slots=capacity.slots)
        self._up = self._checked = True
        self._failures = 0
        self._known = sorted(models)
        if self._slots_set is None and capacity.slots and capacity.slots != self._slots:
            # The engine's own slots (llama.cpp's `--parallel`): every puller takes that many.
            self._slots = capacity.slots
            for model in list(self._pullers):
                if self.circuit(model).state is CircuitState.CLOSED:
                    await self._start_model(model)
        for model in set(self._pullers) - set(models):
            self._stop_model(model)
        for model in set(models) - set(self._pullers):
            if self.circuit(model).state is CircuitState.CLOSED:
                await self._start_model(model)
        if catalogue.loaded is not None:
            for model, tally in self._tallies.items():
                tally.warm = model in catalogue.loaded
        self._load_changed()
        await self._announce()

    async def _announce(self) -> None:
        info = HostInfo(
            host=self.host_url,
            executor=self.executor_id,
            kind=self.host.kind,
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
