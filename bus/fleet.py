"""The SDK's fleet operations: the health view and model management (`client.fleet`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bus.errors import logged
from bus.rpc import call
from bus.subjects import Subjects, canonical_model
from schemas import Error, encode
from schemas.fleet import FleetStatus, ModelsReply, ModelsRequest, PullProgress, Verb

__all__ = ["Fleet"]

log = structlog.get_logger("bus.fleet")

_status = msgspec.json.Decoder(FleetStatus | Error).decode
_models = msgspec.json.Decoder(ModelsReply | Error).decode
_progress = msgspec.json.Decoder(PullProgress)
# Model management calls other than pull answer within this.
_ADMIN_TIMEOUT_S = 180.0


class Fleet:
    """Hosts and models across the fleet, through the health monitor.

    Each verb returns a `ModelsReply` with one result per host; if every host failed,
    the first failure is raised typed instead (`ModelNotFound`, `UpstreamError`, ...).
    """

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects

    async def status(self, timeout: float = 10.0) -> FleetStatus:
        """Every host's state and, per host, each model's memory, load and circuit."""
        subject = self._subjects.health
        return await call(self._nc, subject, b"{}", _status, timeout, service="monitor")

    async def models(
        self,
        verb: Verb,
        model: str | None = None,
        *,
        host: str | None = None,
        keep_alive: float | str | None = None,
        destination: str | None = None,
        timeout: float = _ADMIN_TIMEOUT_S,
    ) -> ModelsReply:
        """Run `verb` (list, show, ps, load, unload, delete, pull, copy) for `model`."""
        request = ModelsRequest(model=model, host=host, keep_alive=keep_alive,
                                destination=destination)  # fmt: skip
        body = encode(request)
        subject = self._subjects.models(verb)
        return await call(self._nc, subject, body, _models, timeout, service="monitor")

    async def pull(
        self,
        model: str,
        *,
        host: str | None = None,
        on_progress: Callable[[PullProgress], None] | None = None,
        timeout: float = 3600.0,
    ) -> ModelsReply:
        """Pull `model` onto `host` (or every host that is up), reporting progress."""
        sub = None
        if on_progress is not None:

            async def deliver(msg: Msg) -> None:
                try:
                    progress = _progress.decode(msg.data)
                except msgspec.DecodeError as exc:
                    log.warning("pull_progress_unreadable", error=str(exc))
                    return
                on_progress(progress)

            # The monitor names the pull by the model's full name (`llama3:latest`).
            subject = self._subjects.pull_progresses(canonical_model(model))
            sub = await self._nc.subscribe(subject, cb=deliver)
            await asyncio.sleep(0)  # let the SUB go out before the request (nats-py)
            await self._nc.flush()
        try:
            return await self.models("pull", model, host=host, timeout=timeout)
        finally:
            if sub is not None:
                with logged(log, "pull_progress_unsubscribe_failed"):
                    await sub.unsubscribe()
