"""Which models the executor takes work for: one puller per model, and per model the
circuit that withdraws it after host failures and lets one probe bring it back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from actors.executor.circuit import Circuit
from actors.executor.puller import Puller, Tally

__all__ = ["ModelSlots"]


class ModelSlots:
    """A part of `Executor` (its state is set up in `Executor.__init__`): pullers and circuits."""

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
