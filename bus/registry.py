"""The host registry: executors announce their hosts' models in a KV bucket with a TTL;
the health monitor's verdicts, in their own bucket, can take a host out."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import msgspec
from nats.js.kv import KeyValue

from bus.kv_view import KvView
from bus.subjects import model_token
from schemas import encode
from schemas.fleet import HostHealth, HostState
from schemas.internal import HostInfo, decode_host

__all__ = ["HostRegistry"]

_decode_health = msgspec.json.Decoder(HostHealth).decode


class HostRegistry:
    """A live view of which executors serve which models, from the registry bucket.

    The bucket's TTL removes entries of executors that died, but watchers are not told
    of expiry, so entries older than `ttl` are also ignored here. With a `health`
    bucket, a host the monitor last found down (within `health_ttl`) is not up, whatever
    its executor says.
    """

    def __init__(
        self,
        kv: KeyValue,
        ttl: float,
        *,
        health: KeyValue | None = None,
        health_ttl: float = 30.0,
    ) -> None:
        self._view = KvView(kv, decode_host, "hosts")
        self._health = KvView(health, _decode_health, "health") if health is not None else None
        self._ttl = ttl
        self._health_ttl = health_ttl

    async def announce(self, key: str, info: HostInfo) -> None:
        """Publish (or refresh) one executor's entry."""
        await self._view.kv.put(key, encode(info))

    async def withdraw(self, key: str) -> None:
        """Remove an executor's entry at clean shutdown."""
        with contextlib.suppress(Exception):
            await self._view.kv.delete(key)

    async def start(self, timeout: float = 5.0) -> None:
        """Start watching; return once the current entries are loaded."""
        await self._view.start(timeout)
        if self._health is not None:
            await self._health.start(timeout)

    async def resync(self, timeout: float = 5.0) -> None:
        """Watch both buckets anew (after a reconnection: they may have been recreated)."""
        await self._view.resync(timeout)
        if self._health is not None:
            await self._health.resync(timeout)

    async def stop(self) -> None:
        await self._view.stop()
        if self._health is not None:
            await self._health.stop()

    def hosts_seen(self) -> list[HostInfo]:
        """Entries refreshed within the TTL, hosts that are down included."""
        fresh_after = time.time() - self._ttl
        return [h for h in self._view.entries.values() if h.at >= fresh_after]

    def hosts(self) -> list[HostInfo]:
        """Hosts that are up: by their executors' word and the health monitor's."""
        return [h for h in self.hosts_seen() if h.up and not self.found_down(h.host)]

    def found_down(self, host: str) -> bool:
        """Whether the health monitor's latest check (if recent) found `host` down."""
        if self._health is None:
            return False
        health = self._health.entries.get(model_token(host))
        fresh_after = time.time() - self._health_ttl
        return (
            health is not None
            and health.checked_at >= fresh_after
            and (health.state is HostState.DOWN)
        )

    def models(self) -> set[str]:
        """Every model some live executor serves."""
        return {m for h in self.hosts() for m in h.models}

    async def wait_until(self, predicate: Callable[[HostRegistry], bool], timeout: float) -> None:
        """Wait until `predicate(self)` holds; raise `TimeoutError` after `timeout`."""
        await self._view.wait_until(lambda: predicate(self), timeout)

    async def changed(self, timeout: float) -> None:
        """Return when an executor's entry changes, or after `timeout` seconds."""
        await self._view.changed(timeout)

    def serves(self, model: str) -> bool:
        """Whether some host that is up has `model` and takes work for it now."""
        return any(model in h.models and model not in h.blocked for h in self.hosts())
