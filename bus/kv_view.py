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


class KvView(Generic[T]):
    """Watches a bucket and keeps its entries, decoded with `decode`.

    An entry that does not decode is logged and left out; a deleted or purged one goes.
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
        self._task = asyncio.create_task(self._watch(watcher), name=f"kv-view-{self.name}")
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        try:
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
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds; raise `TimeoutError` after `timeout`."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def changed(self, timeout: float) -> None:
        """Return when an entry changes, or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait()
