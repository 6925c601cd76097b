"""The router's view of the queues: depth per model and priority, and how fast they drain.

Depth comes from the work consumers (the server's count, so every router sees the same);
running work from the load board; the drain rate from the request events every router
receives.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus.board import Board
from bus.subjects import Subjects
from schemas import Priority, QueueDepth

__all__ = ["QueueWatch", "retry_after_ms"]

log = structlog.get_logger("actors.router.queues")

# The drain rate is measured over this window.
_WINDOW_S = 60.0
_POLL_S = 0.5
# `overloaded` asks clients to come back once a tenth of the queue has drained ...
_RETRY_SHARE = 0.1
# ... within these bounds (and after a second when nothing has drained yet).
_RETRY_MIN_MS, _RETRY_MAX_MS, _RETRY_IDLE_MS = 100, 60_000, 1000


def retry_after_ms(queue_max: int, drain_per_s: float) -> int:
    """When a request refused by a full queue should come back: the time the measured
    drain rate needs to clear a tenth of the queue, within 0.1 s and 60 s."""
    if drain_per_s <= 0:
        return _RETRY_IDLE_MS
    ms = 1000 * _RETRY_SHARE * queue_max / drain_per_s
    return int(min(_RETRY_MAX_MS, max(_RETRY_MIN_MS, ms)))


class QueueWatch:
    """Queue depth and drain rate per model, for balancing, `overloaded` and stats."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        board: Board,
        on_depth: Callable[[QueueDepth], None] | None = None,
    ) -> None:
        self._js = js
        self._on_depth = on_depth
        self._subjects = subjects
        self._board = board
        self._done: dict[str, deque[float]] = defaultdict(deque)
        self._waiting: dict[str, int] = {}
        self._queued: dict[str, int] = defaultdict(int)  # by this router since the last poll
        self._since = time.monotonic()

    def queued(self, model: str) -> None:
        """Count one request this router queued, until the next poll counts it."""
        self._queued[model] += 1

    def finished(self, model: str) -> None:
        """Count one request of `model` that left the queue for good."""
        now = time.monotonic()
        done = self._done[model]
        done.append(now)
        while done and done[0] < now - _WINDOW_S:
            done.popleft()

    def drain_per_s(self, model: str) -> float:
        """Requests of `model` finished per second over the last minute, fleet-wide."""
        now = time.monotonic()
        done = self._done.get(model, deque())
        recent = sum(1 for t in done if t >= now - _WINDOW_S)
        return recent / max(1.0, min(_WINDOW_S, now - self._since))

    def waiting(self, model: str) -> int:
        """Waiting requests of `model`: the last poll's count plus those queued since."""
        return self._waiting.get(model, 0) + self._queued.get(model, 0)

    def running(self, model: str) -> int:
        return sum(load.in_flight for load in self._board.loads(model).values())

    async def depth(self, model: str) -> QueueDepth:
        """The queues of `model` as the server counts them now."""
        waiting = {}
        for priority in Priority:
            consumer = self._subjects.work_consumer(model, priority)
            try:
                info = await self._js.consumer_info(
                    self._subjects.work_stream, consumer, timeout=2.0
                )
                waiting[priority] = int(info.num_pending or 0)
            except (NotFoundError, nats.errors.Error):
                waiting[priority] = 0
        self._waiting[model] = sum(waiting.values())
        self._queued.pop(model, None)
        loads = self._board.loads(model).values()
        depth = QueueDepth(
            model=model,
            interactive=waiting[Priority.INTERACTIVE],
            batch=waiting[Priority.BATCH],
            running=sum(v.in_flight for v in loads),
            slots=sum(v.slots for v in loads),
            drain_per_s=round(self.drain_per_s(model), 3),
        )
        if self._on_depth is not None:
            self._on_depth(depth)
        return depth

    async def poll(self) -> None:
        """Refresh the waiting counts of every model on the board, forever."""
        while True:
            try:
                for model in sorted(self._board.models()):
                    await self.depth(model)
            except Exception as exc:  # keep polling: the counts only go stale meanwhile
                log.warning("queue_poll_failed", error=repr(exc))
            await asyncio.sleep(_POLL_S)
