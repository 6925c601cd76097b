"""Deadlines of queued work: a request whose deadline passes before a host took it gets
its `timeout` then, from the router that accepted it, and never reaches a host.

At the deadline the router claims the request (`bus.claims`); an executor that took it
in time has claimed it first and ends it itself (it stops at the deadline too). The
winner alone ends the request, so it ends exactly once: here, with the `timeout` on its
stream (stored under the id the executor's terminal would use) or as the reply, its
request event, and its work deleted from the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
import structlog
from nats.js.errors import NotFoundError

from bus.actor import reply_error
from bus.claims import ROUTER, Claims
from bus.connection import Connection
from bus.errors import Timeout
from bus.subjects import Subjects
from schemas import encode
from schemas.internal import RequestEvent, Work

__all__ = ["Deadlines"]

log = structlog.get_logger("actors.router.deadlines")

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class Deadlines:
    """One timer per queued request with a deadline, cancelled when the request ends."""

    def __init__(self, nc: Connection, subjects: Subjects, claims: Claims, spawn: Spawn) -> None:
        self._nc = nc
        self._subjects = subjects
        self._claims = claims
        self._spawn = spawn
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def watch(self, work: Work, seq: int) -> None:
        """End `work` (queued at `seq` of the work stream) at its deadline, unless it
        ended before."""
        if work.deadline_at is None:
            return
        delay = max(0.0, work.deadline_at - time.time())
        loop = asyncio.get_running_loop()
        self._timers[work.request_id] = loop.call_later(delay, self._due, work, seq)

    def ended(self, request_id: str) -> None:
        """The request ended (its event arrived): forget its deadline."""
        if timer := self._timers.pop(request_id, None):
            timer.cancel()

    def stop(self) -> None:
        """Forget every deadline (the router is stopping; executors still check them)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _due(self, work: Work, seq: int) -> None:
        self._timers.pop(work.request_id, None)
        self._spawn(self._expire(work, seq))

    async def _expire(self, work: Work, seq: int) -> None:
        rid = work.request_id
        if await self._claims.claim(rid, ROUTER) != ROUTER:
            return  # an executor took it in time and ends it itself
        log.info("request_expired_in_queue", request_id=rid, model=work.model)
        with contextlib.suppress(NotFoundError, nats.errors.Error):
            await self._nc.jetstream().delete_msg(self._subjects.work_stream, seq)
        failure = Timeout("the deadline passed while the request was queued", request_id=rid)
        if work.stream or work.cache_key is not None:
            await self._nc.publish_once(
                self._subjects.stream(rid), encode(failure.to_wire(rid, seq=1)), msg_id=f"{rid}.end"
            )
        if not work.stream and work.reply:
            await reply_error(self._nc, work.reply, failure, rid)
        now = time.time()
        event = RequestEvent(
            request_id=rid,
            kind=work.kind,
            model=work.model,
            outcome=failure.code,
            latency_ms=round((now - work.accepted_at) * 1000, 3),
            fallback_from=work.fallback_from,
            template=work.template,
            at=now,
        )
        await self._nc.publish_once(self._subjects.event("request"), encode(event), msg_id=rid)
