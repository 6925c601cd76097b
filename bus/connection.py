"""Connect to NATS with reconnects, logged connection events and a clean drain."""

from __future__ import annotations

from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS

from bus.errors import Unavailable

__all__ = ["NATS", "connect"]

_FIRST_CONNECT_ATTEMPTS = 2


async def connect(url: str, *, name: str, connect_timeout: float = 5.0, **options: Any) -> NATS:
    """Connect to `url`; reconnect forever after the first success, log every change.

    Raises `Unavailable` when no server answers within `connect_timeout`.
    """
    log = structlog.get_logger("bus.connection").bind(connection=name)

    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", error=repr(exc))

    async def on_disconnected() -> None:
        if nc.is_closed or nc.is_draining:
            log.debug("nats_disconnected", reason="closing")
        else:
            log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected", url=str(nc.connected_url.geturl() if nc.connected_url else ""))

    async def on_closed() -> None:
        log.debug("nats_closed")

    nc = NATS()
    try:
        await nc.connect(
            servers=[url],
            name=name,
            connect_timeout=connect_timeout,  # type: ignore[arg-type]  # nats-py takes floats
            allow_reconnect=True,
            # nats-py retries a first connect forever when this is -1: bound it here and
            # lift the bound once connected.
            max_reconnect_attempts=_FIRST_CONNECT_ATTEMPTS,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py takes floats
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            closed_cb=on_closed,
            **options,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise Unavailable(f"cannot reach NATS at {url}: {exc!r}") from exc
    nc.options["max_reconnect_attempts"] = -1
    return nc
