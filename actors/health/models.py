"""`<prefix>.v1.models.<verb>`: list, show, ps, pull, load, unload and delete, fleet-wide.

A request names a model (all verbs but list and ps) and optionally one host; without a
host it acts on every host it concerns (see `ModelsRequest`). Each host answers for
itself in the reply; a request on which every host failed is answered with the first
host's typed error instead, so a one-host request fails as that host did.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec
from nats.aio.msg import Msg

from actors.backends.admin import Admin
from actors.backends.http import HostUnavailable
from actors.backends.policy import FOREVER, ModelPolicy
from actors.health.pulls import Pulls
from bus.errors import (
    BadRequest,
    ModelNotFound,
    NoHealthyHost,
    OllameshError,
    error_from_wire,
    quote,
)
from bus.rpc import decode_body
from bus.subjects import canonical_model
from schemas import encode
from schemas.fleet import HostHealth, HostResult, HostState, ModelsReply, ModelsRequest, Verb

__all__ = ["VERBS", "ModelManager"]

VERBS: tuple[Verb, ...] = ("list", "show", "ps", "pull", "load", "unload", "delete", "copy")


class Fleet(Protocol):
    """What the manager needs of the monitor: the hosts it knows, a client for each."""

    def healths(self) -> list[HostHealth]: ...

    def admin(self, host: str) -> Admin: ...

    def recheck(self, host: str) -> None: ...


HostAction = Callable[[str, Admin, ModelsRequest], Awaitable[HostResult]]


class ModelManager:
    """Runs each model-management verb on the hosts it concerns."""

    def __init__(
        self,
        fleet: Fleet,
        pulls: Pulls,
        policy: ModelPolicy,
        *,
        timeout_s: float,
        load_timeout_s: float,
    ) -> None:
        self._fleet = fleet
        self._pulls = pulls
        self._policy = policy
        self._timeout_s = timeout_s
        # Loading a big model takes as long as its first token may: the executor's bound.
        self._load_timeout_s = load_timeout_s
        self.actions: dict[Verb, HostAction] = {
            "list": self._list,
            "show": self._show,
            "ps": self._ps,
            "pull": self._pull,
            "load": self._load,
            "unload": self._unload,
            "delete": self._delete,
            "copy": self._copy,
        }

    def handler(self, verb: Verb) -> Callable[[Msg], Awaitable[bytes]]:
        async def handle(msg: Msg) -> bytes:
            return encode(
                await self.run(verb, decode_body(ModelsRequest, msg.data, f"models.{verb}"))
            )

        return handle

    async def run(self, verb: Verb, req: ModelsRequest) -> ModelsReply:
        if verb not in ("list", "ps") and not req.model:
            raise BadRequest(f"models.{verb} needs a model")
        if verb == "copy" and not req.destination:
            raise BadRequest("models.copy needs a destination")
        if req.model:  # `llama3` is `llama3:latest`, as hosts list it
            req = msgspec.structs.replace(req, model=canonical_model(req.model))
        hosts = self._targets(verb, req)
        action = self.actions[verb]
        results = await asyncio.gather(*(self._on(host, action, req) for host in hosts))
        if verb not in ("list", "show", "ps"):
            for host in hosts:
                self._fleet.recheck(host)  # the fleet view shows the change at once
        failed = [r.error for r in results if r.error is not None]
        if failed and len(failed) == len(results):
            raise error_from_wire(failed[0])
        return ModelsReply(verb=verb, model=req.model, results=list(results))

    def _targets(self, verb: Verb, req: ModelsRequest) -> list[str]:
        healths = {h.host: h for h in self._fleet.healths()}
        if req.host is not None:
            host = req.host.rstrip("/")
            if host not in healths:
                known = ", ".join(sorted(healths)) or "none"
                raise BadRequest(f"unknown host {quote(req.host)}; known hosts: {known}")
            return [host]
        up = [h for h in healths.values() if h.state is not HostState.DOWN]
        if not up:
            raise NoHealthyHost("no host is up")
        if verb in ("list", "ps", "pull"):
            return sorted(h.host for h in up)
        having = sorted(h.host for h in up if any(m.name == req.model for m in h.models))
        if not having:
            raise ModelNotFound(f"no host that is up has {quote(req.model)}; pull it first")
        return having[:1] if verb == "show" else having

    async def _on(self, host: str, action: HostAction, req: ModelsRequest) -> HostResult:
        started = time.perf_counter()
        try:
            result = await action(host, self._fleet.admin(host), req)
        except OllameshError as exc:
            result = HostResult(host=host, ok=False, error=exc.to_wire())
        result.duration_ms = round((time.perf_counter() - started) * 1000, 3)
        return result

    async def _list(self, host: str, admin: Admin, req: ModelsRequest) -> HostResult:
        check = await admin.check(self._timeout_s)
        if check.models is None:
            raise _unreachable(host, check.failures)
        return HostResult(host=host, models=check.models)

    async def _ps(self, host: str, admin: Admin, req: ModelsRequest) -> HostResult:
        check = await admin.check(self._timeout_s)
        if check.loaded is None:
            raise _unreachable(host, check.failures)
        return HostResult(host=host, loaded=check.loaded)

    async def _show(self, host: str, admin: Admin, req: ModelsRequest) -> HostResult:
        assert req.model is not None
        return HostResult(host=host, info=await admin.show(req.model, self._timeout_s))

    async def _pull(self, host: str, admin: Admin, req: ModelsRequest) -> HostResult:
        assert req.model is not None
        return HostResult(host=host, status=await self._pulls.pull(host, req.model))

    async def _load(self, host: str, admin: Admin, req: ModelsRequest) -> HostResult:
        assert req.model is not None
        keep_alive = req.keep_alive
        if keep_alive is None and self._policy.pinned(req.model):
            keep_alive = FOREVER
        return await self.load(host, req.model, keep_alive)

    async def load(self, host: str, model: str, keep_alive: float | str | None) -> HostResult:
        """Load `model` with its fixed load-time options, so requests find it as they need it."""
        options = self._policy.load_options(model)
        await self._fleet.admin(host).load(model, keep_alive, options, self._load_timeout_s)
        return HostResult(host=host, status="loaded" if keep_alive != 0 else "unloaded")

    async def _unload(self, host: str, admin: Admin, req: ModelsRequest) -> HostResult:
        assert req.model is not None
        return await self.load(host, req.model, 0)

    async def _delete(self, host: str, admin: Admin, req: ModelsRequest) -> HostResult:
        assert req.model is not None
        await admin.delete(req.model, self._timeout_s)
        return HostResult(host=host, status="deleted")

    async def _copy(self, host: str, admin: Admin, req: ModelsRequest) -> HostResult:
        assert req.model is not None and req.destination is not None
        await admin.copy(req.model, req.destination, self._timeout_s)
        return HostResult(host=host, status="copied")


def _unreachable(host: str, failures: list[str]) -> OllameshError:
    return HostUnavailable(f"{host} did not answer: {'; '.join(failures)}")
