"""The simulator's own control API under `/_sim`: faults and counters, at run time."""

from __future__ import annotations

import msgspec
from starlette.routing import Route

from actors.simulator.engine import Engine, Fault
from actors.simulator.exchange import Endpoint, Exchange
from actors.simulator.scripts import Script
from actors.simulator.wire import BadRequest

__all__ = ["control_routes"]

_fault_decoder = msgspec.json.Decoder(Fault)
_script_decoder = msgspec.json.Decoder(Script)


class _Control:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _faults(self) -> dict[str, object]:
        return {"faults": msgspec.to_builtins(self.engine.faults)}

    async def faults(self, ex: Exchange) -> None:
        """List the armed faults (GET), arm one from a Fault body (POST), disarm all (DELETE)."""
        if ex.method == "POST":
            try:
                fault = _fault_decoder.decode(ex.body)
            except msgspec.DecodeError as exc:
                raise BadRequest(f"invalid fault: {exc}") from exc
            self.engine.set_fault(fault)
        elif ex.method == "DELETE":
            self.engine.clear_faults()
        await ex.json(200, self._faults())

    async def scripts(self, ex: Exchange) -> None:
        """List the scripted answers (GET), add one from a Script body (POST), clear all
        (DELETE)."""
        scripts = self.engine.scripts
        if ex.method == "POST":
            try:
                scripts.add(_script_decoder.decode(ex.body))
            except (msgspec.DecodeError, ValueError) as exc:
                raise BadRequest(f"invalid script: {exc}") from exc
        elif ex.method == "DELETE":
            scripts.clear()
        await ex.json(200, {"scripts": msgspec.to_builtins(scripts.armed)})

    async def prompts(self, ex: Exchange) -> None:
        """The latest prompts (or last chat messages) answered, oldest first."""
        await ex.json(200, {"prompts": list(self.engine.stats.prompts)})

    async def stats(self, ex: Exchange) -> None:
        await ex.json(200, self.engine.stats.snapshot())

    async def reset(self, ex: Exchange) -> None:
        self.engine.reset_stats()
        await ex.json(200, self.engine.stats.snapshot())


def control_routes(engine: Engine) -> list[Route]:
    """Make the `/_sim` routes; their requests are not counted in the stats."""
    control = _Control(engine)
    return [
        Route("/_sim/faults", Endpoint(control.faults, None), methods=["GET", "POST", "DELETE"]),
        Route("/_sim/scripts", Endpoint(control.scripts, None), methods=["GET", "POST", "DELETE"]),
        Route("/_sim/prompts", Endpoint(control.prompts, None), methods=["GET"]),
        Route("/_sim/stats", Endpoint(control.stats, None), methods=["GET"]),
        Route("/_sim/reset", Endpoint(control.reset, None), methods=["POST"]),
    ]
