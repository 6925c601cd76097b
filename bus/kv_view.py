"""A live local copy of a key-value bucket: every entry decoded, changes awaited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec
import structlog
from nats.js.kv import KeyValue

__all__ = ["KvView"]

log = structlog.get_logger("bus.kv_view")

T = TypeVar("T")

# After the watch fails (the bucket gone in a server restart, say), it starts again
# after this long, doubling up to the max.
_RETRY_MIN_S = 0.2
_RETRY_MAX_S = 5.0


class KvView(Generic[T]):
    """Watches a bucket and keeps its entries, decoded with `decode`.

    An entry that does not decode is logged and left out; a deleted or purged one goes.
    A watch that breaks is logged and started again; `resync` starts it again at once
    (after a reconnection: a memory-backed bucket may have been created anew), keeping
    the entries it has until the new watch has delivered the current ones.
    """

    def __init__(self, kv: KeyValue, decode: Callable[[bytes], T], name: str) -> None:
        self.kv = kv
        self.name = name
        self._decode = decode
        self.entries: dict[str, T] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()

    async def start(self, timeout: float = 5.0) -> None:
        """Start watching; return once the current entries are loaded."""
        watcher = await self.kv.watchall()
        self._task = asyncio.create_task(self._run(watcher), name=f"kv-view-{self.name}")
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def resync(self, timeout: float = 5.0) -> None:
        """Watch anew (the bucket may have been recreated); return once loaded again, or
        after `timeout` (the watch goes on trying by itself)."""
        await self.stop()
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(None), name=f"kv-view-{self.name}")
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            log.warning("kv_watch_not_ready", bucket=self.name, timeout_s=timeout)

    async def _run(self, watcher: KeyValue.KeyWatcher | None) -> None:
        retry = _RETRY_MIN_S
        while True:
            try:
                if watcher is None:
                    watcher = await self.kv.watchall()
                await self._watch(watcher)
                log.warning("kv_watch_ended", bucket=self.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kv_watch_failed", bucket=self.name, retry_in_s=retry)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
                watcher = None
            await asyncio.sleep(retry)
            retry = min(_RETRY_MAX_S, retry * 2)

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the end of the initial values
                self._ready.set()
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.entries.pop(entry.key, None)
            else:
                try:
                    self.entries[entry.key] = self._decode(entry.value)
                except msgspec.DecodeError:
                    log.warning("kv_entry_unreadable", bucket=self.name, key=entry.key)
            async with self._changed:
                self._changed.notify_all()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds; raise `TimeoutError` after `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def changed(self, timeout: float) -> None:
        """Return when an entry changes, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait()
