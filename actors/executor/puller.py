"""Taking work for one model on one host: slots, priorities and the host-choice gate.

Two pull loops share the model's slots, one per priority queue:

- interactive work may take any free slot;
- batch work needs two free slots (one, on a one-slot host) and only pulls while the
  interactive queue is empty, so a flood of batch work leaves a slot for the next
  interactive request and never delays it by more than one slot;
- before each pull, the host asks the placement policy whether it is the right host for
  the next request (warm first, then the host strategy); when it is not, it waits for
  the board to change, unless work has been waiting too long for the better host.

A pull request lives `FETCH_EXPIRY_S` at the server and is never cancelled: the server
would still deliver work to a cancelled pull, and that work would sit unacknowledged
until ack_wait. A stopped loop therefore ends by itself and hands back what reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import BadRequestError

from actors.executor.placement import should_take
from bus.board import Board
from bus.subjects import Subjects
from schemas import ModelLoad, Priority

__all__ = ["FETCH_EXPIRY_S", "Puller", "Tally"]

FETCH_EXPIRY_S = 0.5
# How often a host that declines to pull looks whether work is waiting anyway.
_RECHECK_S = 0.1
# Work left waiting this long while warm hosts declined to pull is taken regardless.
_DEFER_LIMIT_S = 0.25
# A batch pull waits this long after the interactive one, so interactive work comes first.
_BATCH_HOLD_S = 0.005
# Service time memory: each request moves the average a fifth of the way.
_EWMA = 0.2

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


@dataclass
class Tally:
    """What a host has done with a model; outlives the pullers (a circuit replaces them)."""

    warm: bool = False
    taken: int = 0
    succeeded: int = 0
    failed: int = 0
    service_ms: float | None = None

    def finished(self, ok: bool, service_ms: float | None = None) -> None:
        """Count how a request ended; a success also means the model is now loaded."""
        if not ok:
            self.failed += 1
            return
        self.succeeded += 1
        self.warm = True
        if service_ms is not None:
            self.service_ms = (
                service_ms
                if self.service_ms is None
                else self.service_ms + _EWMA * (service_ms - self.service_ms)
            )


class Puller:
    """Pulls `model`'s work for one host, within `slots` requests at a time."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        subjects: Subjects,
        model: str,
        slots: int,
        tally: Tally,
        me: str,
        board: Board,
        strategy: str,
        cold_after_s: float,
        serve: Callable[[Msg], Awaitable[None]],
        spawn: Spawn,
        paused: Callable[[], float],
        changed: Callable[[], None],
        ack_wait_s: float,
        log: structlog.BoundLogger,
    ) -> None:
        self.model = model
        self.slots = slots
        self.tally = tally
        self.in_flight = 0
        self.active = True
        self._js = js
        self._subjects = subjects
        self._me = me
        self._board = board
        self._strategy = strategy
        self._cold_after_s = cold_after_s
        self._serve = serve
        self._spawn = spawn
        self._paused = paused
        self._changed = changed
        self._ack_wait_s = ack_wait_s
        self._log = log.bind(model=model)
        self._state = asyncio.Condition()
        self._listening = False  # an interactive pull is waiting at the server

    def load(self) -> ModelLoad:
        """This host's entry for the model on the load board."""
        t = self.tally
        return ModelLoad(
            slots=self.slots if self.active else 0,
            in_flight=self.in_flight,
            warm=t.warm,
            taken=t.taken,
            succeeded=t.succeeded,
            failed=t.failed,
            service_ms=t.service_ms,
        )

    async def start(self) -> None:
        """Create the consumers if needed and start both pull loops."""
        for priority in Priority:
            consumer = await self._consumer(priority)
            self._spawn(self._loop(priority, consumer))

    def stop(self) -> None:
        """Stop pulling; each loop ends once its pull request expired."""
        self.active = False
        self._spawn(self._notify())

    async def _notify(self) -> None:
        async with self._state:
            self._state.notify_all()

    async def _consumer(self, priority: Priority) -> str:
        name = self._subjects.work_consumer(self.model, priority)
        config = ConsumerConfig(
            durable_name=name,
            filter_subject=self._subjects.work(self.model, priority),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait_s,
            max_deliver=-1,
            max_ack_pending=-1,
        )
        try:
            await self._js.add_consumer(self._subjects.work_stream, config)
        except BadRequestError as exc:
            # Another executor created it with other settings; share it as it is.
            self._log.info("consumer_exists", consumer=name, note=exc.description)
        return name

    def _may_pull(self, priority: Priority) -> bool:
        free = self.slots - self.in_flight
        if priority is Priority.INTERACTIVE:
            return free >= 1
        return free >= min(2, self.slots) and self._listening

    async def _slot(self, priority: Priority) -> None:
        """Wait for a slot this priority may use (or for the puller to stop)."""
        async with self._state:
            await self._state.wait_for(lambda: not self.active or self._may_pull(priority))
        if priority is Priority.BATCH and self.active:
            await asyncio.sleep(_BATCH_HOLD_S)

    async def _loop(self, priority: Priority, consumer: str) -> None:
        psub = await self._js.pull_subscribe_bind(
            durable=consumer, stream=self._subjects.work_stream
        )
        interactive = priority is Priority.INTERACTIVE
        try:
            while self.active:
                await self._slot(priority)
                if not self.active or not self._may_pull(priority):
                    continue
                if (pause := self._paused()) > 0:
                    await asyncio.sleep(pause)
                    continue
                if not await self._my_turn(priority, consumer):
                    continue
                if interactive:
                    self._listening = True
                    await self._notify()
                try:
                    msgs = await psub.fetch(1, timeout=FETCH_EXPIRY_S)
                except nats.errors.TimeoutError:
                    continue
                except (nats.errors.Error, OSError) as exc:
                    self._log.warning("fetch_failed", error=repr(exc))
                    await asyncio.sleep(0.5)
                    continue
                finally:
                    if interactive:
                        self._listening = False
                for msg in msgs:
                    await self._take(msg)
        finally:
            # Work that landed after we stopped is handed straight back.
            while not psub._sub._pending_queue.empty():  # type: ignore[union-attr]
                msg = psub._sub._pending_queue.get_nowait()  # type: ignore[union-attr]
                if msg.reply:
                    with contextlib.suppress(Exception):
                        await msg.nak()
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _take(self, msg: Msg) -> None:
        if not self.active or self.in_flight >= self.slots:
            await msg.nak()  # withdrawn, or the other priority took the slot meanwhile
            return
        self.in_flight += 1
        self.tally.taken += 1
        self._changed()
        self._spawn(self._run(msg))

    async def _run(self, msg: Msg) -> None:
        try:
            await self._serve(msg)
        finally:
            self.in_flight -= 1
            self._changed()
            await self._notify()

    async def _my_turn(self, priority: Priority, consumer: str) -> bool:
        """Wait until this host is the right one for the next request, or work waited."""
        waiting_since: float | None = None
        checked = time.monotonic()
        while self.active:
            loads = self._board.loads(self.model)
            loads[self._me] = self.load()
            if should_take(self._strategy, self._me, loads):
                return True
            await self._board.changed(_RECHECK_S)
            now = time.monotonic()
            if now - checked < _RECHECK_S:
                continue
            checked = now
            if await self._pending(consumer):
                waiting_since = waiting_since or now
                limit = _DEFER_LIMIT_S if self.tally.warm else self._cold_after_s
                if now - waiting_since >= limit:
                    self._log.debug("taking_waiting_work", priority=priority, warm=self.tally.warm)
                    return True
            else:
                waiting_since = None
        return False

    async def _pending(self, consumer: str) -> int:
        try:
            info = await self._js.consumer_info(self._subjects.work_stream, consumer, timeout=1.0)
        except (nats.errors.Error, OSError):
            return 0
        return int(info.num_pending or 0)
