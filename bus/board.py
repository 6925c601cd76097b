"""The load board: every executor publishes its per-model load; everyone reads all of it.

Core NATS, not stored: an entry is a snapshot, republished on every change (at most
every few milliseconds) and as a heartbeat, and forgotten when it stops coming. Executors
read it to decide which host takes the next request; routers read it to balance models
on the whole fleet's load rather than their own requests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.subjects import Subjects
from schemas import encode
from schemas.internal import HostLoad, ModelLoad, decode_load

__all__ = ["Board"]

log = structlog.get_logger("bus.board")

# An executor republishes at least this often; an entry older than the TTL is gone.
HEARTBEAT_S = 1.0
_TTL_S = 3.5 * HEARTBEAT_S
# Listening this long, a board has heard every executor that is alive at least once.
_SETTLE_S = 1.5 * HEARTBEAT_S


class Board:
    """One process's view of the load board, shared by its router and executors."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects
        self._entries: dict[str, HostLoad] = {}
        self._seen: dict[str, float] = {}
        self._sub: Subscription | None = None
        self._changed = asyncio.Event()
        # Since when this board has been listening (start, or the last reconnection).
        self._since = time.monotonic()

    async def start(self) -> None:
        self._since = time.monotonic()
        self._sub = await self._nc.subscribe(self._subjects.boards, cb=self._on_entry)

    def reconnected(self) -> None:
        """Entries may have been missed while the connection was down: listen anew."""
        self._since = time.monotonic()

    async def settled(self) -> None:
        """Return once every live executor has had time to publish since we listened."""
        left = self._since + _SETTLE_S - time.monotonic()
        if left > 0:
            await asyncio.sleep(left)

    def serving(self, request_id: str, *, besides: str) -> float | None:
        """When the fresh entry of an executor other than `besides` that says it serves
        `request_id` arrived (monotonic), if there is one."""
        stale = time.monotonic() - _TTL_S
        for key, entry in self._entries.items():
            if key != besides and self._seen[key] >= stale and request_id in entry.serving:
                return self._seen[key]
        return None

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on_entry(self, msg: Msg) -> None:
        try:
            load = decode_load(msg.data)
        except msgspec.DecodeError:
            log.warning("board_entry_unreadable", subject=msg.subject)
            return
        self.put(load)

    def put(self, load: HostLoad) -> None:
        """Take an entry (the own executor's at once, without waiting for the echo)."""
        if load.models or load.serving or load.executor in self._entries:
            self._entries[load.executor] = load
            self._seen[load.executor] = time.monotonic()
        if not load.models and not load.serving:  # an executor with nothing any more
            self._entries.pop(load.executor, None)
        self._changed.set()

    async def publish(self, load: HostLoad) -> None:
        """Publish an executor's entry to every board (this one included, at once)."""
        self.put(load)
        await self._nc.publish(self._subjects.board(load.executor), encode(load))

    def loads(self, model: str) -> dict[str, ModelLoad]:
        """Fresh entries for `model`: executor id -> its load."""
        stale = time.monotonic() - _TTL_S
        return {
            key: entry.models[model]
            for key, entry in self._entries.items()
            if self._seen[key] >= stale and model in entry.models
        }

    def hosts(self) -> list[HostLoad]:
        """Every fresh entry: one per executor."""
        stale = time.monotonic() - _TTL_S
        return [e for k, e in self._entries.items() if self._seen[k] >= stale]

    def models(self) -> set[str]:
        """Every model some fresh entry lists."""
        stale = time.monotonic() - _TTL_S
        return {m for k, e in self._entries.items() if self._seen[k] >= stale for m in e.models}

    async def changed(self, timeout: float) -> None:
        """Return when an entry arrives, or after `timeout` seconds."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
