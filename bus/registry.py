"""The host registry: executors announce their hosts' models in a KV bucket with a TTL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.js.kv import KeyValue

from schemas import HostInfo, decode_host, encode

__all__ = ["HostRegistry"]

log = structlog.get_logger("bus.registry")


class HostRegistry:
    """A live view of which executors serve which models, from the registry bucket.

    The bucket's TTL removes entries of executors that died, but watchers are not told
    of expiry, so entries older than `ttl` are also ignored here.
    """

    def __init__(self, kv: KeyValue, ttl: float) -> None:
        self._kv = kv
        self._ttl = ttl
        self._hosts: dict[str, HostInfo] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()

    async def announce(self, key: str, info: HostInfo) -> None:
        """Publish (or refresh) one executor's entry."""
        await self._kv.put(key, encode(info))

    async def withdraw(self, key: str) -> None:
        """Remove an executor's entry at clean shutdown."""
        with contextlib.suppress(Exception):
            await self._kv.delete(key)

    async def start(self, timeout: float = 5.0) -> None:
        """Start watching; return once the current entries are loaded."""
        watcher = await self._kv.watchall()
        self._task = asyncio.create_task(self._watch(watcher), name="host-registry")
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
            async for entry in watcher:
                if entry is None:  # the end of the initial values
                    self._ready.set()
                    continue
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._hosts.pop(entry.key, None)
                else:
                    try:
                        self._hosts[entry.key] = decode_host(entry.value)
                    except msgspec.DecodeError:
                        log.warning("registry_entry_unreadable", key=entry.key)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def hosts_seen(self) -> list[HostInfo]:
        """Entries refreshed within the TTL, hosts that are down included."""
        fresh_after = time.time() - self._ttl
        return [h for h in self._hosts.values() if h.at >= fresh_after]

    def hosts(self) -> list[HostInfo]:
        """Hosts that are up."""
        return [h for h in self.hosts_seen() if h.up]

    def models(self) -> set[str]:
        """Every model some live executor serves."""
        return {m for h in self.hosts() for m in h.models}

    async def wait_until(self, predicate: Callable[[HostRegistry], bool], timeout: float) -> None:
        """Wait until `predicate(self)` holds; raise `TimeoutError` after `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def changed(self, timeout: float) -> None:
        """Return when an entry changes, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait()

    def serves(self, model: str) -> bool:
        """Whether some host that is up has `model` and takes work for it now."""
        return any(model in h.models and model not in h.blocked for h in self.hosts())
