"""The SDK's fleet operations: the health view and model management (`client.fleet`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
from nats.aio.msg import Msg

from bus.rpc import call
from bus.subjects import canonical_model
from schemas import Error, encode
from schemas.fleet import FleetStatus, ModelsReply, ModelsRequest, PullProgress, Verb

if TYPE_CHECKING:
    from bus.client import Client

__all__ = ["Fleet"]

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

    def __init__(self, client: Client) -> None:
        self._client = client

    async def status(self, timeout: float = 10.0) -> FleetStatus:
        """Every host's state and, per host, each model's memory, load and circuit."""
        c = self._client
        return await call(c.nc, c.subjects.health, b"{}", _status, timeout, service="monitor")

    async def models(
        self,
        verb: Verb,
        model: str | None = None,
        *,
        host: str | None = None,
        keep_alive: float | str | None = None,
        timeout: float = _ADMIN_TIMEOUT_S,
    ) -> ModelsReply:
        """Run `verb` (list, show, ps, load, unload, delete, pull) for `model`."""
        c = self._client
        body = encode(ModelsRequest(model=model, host=host, keep_alive=keep_alive))
        subject = c.subjects.models(verb)
        return await call(c.nc, subject, body, _models, timeout, service="monitor")

    async def pull(
        self,
        model: str,
        *,
        host: str | None = None,
        on_progress: Callable[[PullProgress], None] | None = None,
        timeout: float = 3600.0,
    ) -> ModelsReply:
        """Pull `model` onto `host` (or every host that is up), reporting progress."""
        c = self._client
        sub = None
        if on_progress is not None:

            async def deliver(msg: Msg) -> None:
                with contextlib.suppress(msgspec.DecodeError):
                    on_progress(_progress.decode(msg.data))

            # The monitor names the pull by the model's full name (`llama3:latest`).
            subject = c.subjects.pull_progresses(canonical_model(model))
            sub = await c.nc.subscribe(subject, cb=deliver)
            await asyncio.sleep(0)  # let the SUB go out before the request (nats-py)
            await c.nc.flush()
        try:
            return await self.models("pull", model, host=host, timeout=timeout)
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
