"""Taking work for one model on one host: slots, priorities and the host-choice gate.

One pull worker per slot and priority queue shares the model's slots:

- interactive work may take any free slot;
- batch work never takes the last free slot (unless the host has only one) and pulls
  only while no interactive work waits, so a flood of batch work never delays an
  interactive request by more than one slot;
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
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import BadRequestError

from actors.executor.placement import should_take
from bus.board import Board
from bus.errors import logged
from bus.subjects import Subjects
from schemas import Priority
from schemas.internal import ModelLoad

__all__ = ["FETCH_EXPIRY_S", "Puller", "Tally"]

FETCH_EXPIRY_S = 0.5
# How often a host that declines to pull looks whether work is waiting anyway.
_RECHECK_S = 0.1
# Work left waiting this long while warm hosts declined to pull is taken regardless.
_DEFER_LIMIT_S = 0.25
# A batch pull waits this long after the interactive one, so interactive work comes first.
_BATCH_HOLD_S = 0.005
# How long a stopping worker waits for work already delivered to it.
_LATE_FETCH_S = 0.1
# Service time memory: each request moves the average a fifth of the way.
_EWMA = 0.2

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]
# Runs a loop (a coroutine function) that is started again if it crashes.
Supervise = Callable[..., "asyncio.Task[None]"]


@dataclass
class Tally:
    """A host's state for one model, shared by its successive pullers (a circuit closing
    replaces the probe's puller while the probe request is still finishing)."""

    warm: bool = False
    in_flight: int = 0
    taken: int = 0
    succeeded: int = 0
    failed: int = 0
    service_ms: float | None = None
    # The pullers sharing this tally: told whenever a slot frees or a pull ends.
    listeners: set[Callable[[], None]] = field(default_factory=set)

    def changed(self) -> None:
        for listener in list(self.listeners):
            listener()

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
        supervise: Supervise,
        paused: Callable[[], float],
        changed: Callable[[], None],
        ack_wait_s: float,
        log: structlog.BoundLogger,
    ) -> None:
        self.model = model
        self.slots = slots
        self.tally = tally
        self.active = True
        self._js = js
        self._subjects = subjects
        self._me = me
        self._board = board
        self._strategy = strategy
        self._cold_after_s = cold_after_s
        self._serve = serve
        self._spawn = spawn
        self._supervise = supervise
        self._paused = paused
        self._changed = changed
        self._ack_wait_s = ack_wait_s
        self._log = log.bind(model=model)
        # Pull requests waiting at the server, and whether work is queued behind the
        # last item taken, per priority.
        self._pulling = dict.fromkeys(Priority, 0)
        self._backlog = dict.fromkeys(Priority, False)
        # When work was first seen waiting while this host declined to pull.
        self._backlog_since: dict[Priority, float | None] = dict.fromkeys(Priority)
        self._checked_at = dict.fromkeys(Priority, 0.0)
        # Workers waiting for a slot, per priority: woken only as many as may start,
        # never all at once (with 64 slots a wake-up of all cost a tenth of the CPU).
        self._waiters: dict[Priority, list[asyncio.Future[None]]] = {p: [] for p in Priority}
        tally.listeners.add(self._wake)

    def load(self, pulling: int = 0) -> ModelLoad:
        """This host's entry for the model on the load board; with `pulling`, as it will
        be if that many pull requests in flight bring work."""
        t = self.tally
        return ModelLoad(
            slots=self.slots if self.active else 0,
            in_flight=t.in_flight + pulling,
            warm=t.warm,
            taken=t.taken + pulling,
            succeeded=t.succeeded,
            failed=t.failed,
            service_ms=t.service_ms,
        )

    async def start(self) -> None:
        """Create the consumers if needed; start one pull worker per slot and priority."""
        for priority in Priority:
            consumer = await self._consumer(priority)
            for _ in range(self.slots):
                self._supervise(f"pull {priority}", partial(self._worker, priority, consumer))

    async def ensure_consumers(self) -> None:
        """Create the consumers again if a server lost them (workers pull by name)."""
        for priority in Priority:
            await self._consumer(priority)

    def stop(self) -> None:
        """Stop pulling; each worker ends once its pull request expired."""
        self.active = False
        self._wake()
        self.tally.listeners.discard(self._wake)

    def _wake(self) -> None:
        """Release the waiting workers that may start now (all of them once stopped)."""
        for priority, waiters in self._waiters.items():
            n = len(waiters) if not self.active else self._startable(priority)
            for waiter in waiters[:n]:
                if not waiter.done():
                    waiter.set_result(None)
            del waiters[:n]

    def _startable(self, priority: Priority) -> int:
        """How many more pulls of `priority` may start now (see `_slot_free`)."""
        if not self._slot_free(priority):
            return 0
        if not self._backlog[priority]:
            return 1
        return self._room(priority) - self.tally.in_flight - self._pulling[priority]

    async def _wait_turn(self, priority: Priority) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[priority].append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._waiters[priority].remove(waiter)

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

    def _room(self, priority: Priority) -> int:
        """How many requests of `priority` may run at once: batch never the last slot."""
        return self.slots if priority is Priority.INTERACTIVE else max(1, self.slots - 1)

    def _slot_free(self, priority: Priority) -> bool:
        """Whether one more pull of `priority` may start now.

        A pull waiting at the server claims a slot of its priority. Each priority keeps
        one pull waiting, and more only while its queue has a backlog (the last item
        said more were pending), so an idle host pulls one item at a time and places it
        well, and a busy one drains its queue in parallel. Batch pulls only while the
        interactive pull is waiting (no interactive work waits); its claims do not hold
        interactive work back, and an item that arrives when its slot is gone goes back.
        """
        t, pulling = self.tally, self._pulling
        if t.in_flight + pulling[priority] >= self._room(priority):
            return False
        if pulling[priority] and not self._backlog[priority]:
            return False
        interactive = Priority.INTERACTIVE
        return priority is interactive or (
            pulling[interactive] > 0 and not self._backlog[interactive]
        )

    async def _worker(self, priority: Priority, consumer: str) -> None:
        """One slot's pull loop: wait for its turn, pull one item, take it."""
        psub = await self._js.pull_subscribe_bind(
            durable=consumer, stream=self._subjects.work_stream
        )
        try:
            while self.active:
                if not await self._ready(priority, consumer):
                    continue
                # No await since `_ready` said yes: the count is exact for the next check.
                self._pulling[priority] += 1
                msgs: list[Msg] = []
                try:
                    msgs = await psub.fetch(1, timeout=FETCH_EXPIRY_S)
                except TimeoutError:  # nats-py raises its own, or a bare asyncio one
                    self._backlog[priority] = False
                except (nats.errors.Error, OSError) as exc:
                    self._log.warning("fetch_failed", error=repr(exc))
                    await asyncio.sleep(0.5)
                finally:
                    self._pulling[priority] -= 1
                for msg in msgs:
                    self._backlog[priority] = msg.metadata.num_pending > 0
                    await self._take(msg, priority)
                self.tally.changed()  # a claim ended, maybe with a backlog behind it
        finally:
            await self._hand_back_late(psub)

    async def _hand_back_late(self, psub: JetStreamContext.PullSubscription) -> None:
        """Hand back work that landed after this worker stopped, then unsubscribe."""
        while psub.pending_msgs:  # fetch(1) takes what is already here without asking
            try:
                msgs = await psub.fetch(1, timeout=_LATE_FETCH_S)
            except TimeoutError:
                break  # only the server's status messages were left
            except nats.errors.Error as exc:
                self._log.warning("late_work_not_handed_back", error=repr(exc))
                break
            for msg in msgs:
                with logged(self._log, "late_work_not_handed_back"):
                    await msg.nak()
        with logged(self._log, "pull_unsubscribe_failed"):
            await psub.unsubscribe()

    async def _ready(self, priority: Priority, consumer: str) -> bool:
        """Wait until this worker may pull: a free slot, no pause, and this host's turn.

        Returns False when the puller stopped. The turn is judged with this host's pulls
        in flight counted as work taken, so an idle host keeps one pull waiting while its
        peers are idle too, and a lone host keeps one per free slot.
        """
        while self.active:
            if not self._slot_free(priority):
                await self._wait_turn(priority)
                continue
            if (pause := self._paused()) > 0:
                await asyncio.sleep(pause)
                continue
            if priority is Priority.BATCH:
                await asyncio.sleep(_BATCH_HOLD_S)  # interactive work that just came first
                if not self._slot_free(priority):
                    continue
            loads = self._board.loads(self.model)
            loads[self._me] = self.load(pulling=sum(self._pulling.values()))
            if should_take(self._strategy, self._me, loads):
                return True
            await self._board.changed(_RECHECK_S)
            if await self._waited_too_long(priority, consumer) and self._slot_free(priority):
                return True
        return False

    async def _waited_too_long(self, priority: Priority, consumer: str) -> bool:
        """Whether work has waited past the limit while this host declined to pull; if
        so, one worker may pull one item.

        One worker per priority asks the server at most every `_RECHECK_S`; the others
        read its answer.
        """
        now = time.monotonic()
        if now - self._checked_at[priority] >= _RECHECK_S:
            self._checked_at[priority] = now
            if await self._pending(consumer):
                self._backlog_since[priority] = self._backlog_since[priority] or now
            else:
                self._backlog_since[priority] = None
        since = self._backlog_since[priority]
        limit = _DEFER_LIMIT_S if self.tally.warm else self._cold_after_s
        if since is None or now - since < limit:
            return False
        # One item goes; the next needs work to wait the whole limit again.
        self._backlog_since[priority] = None
        return True

    async def _take(self, msg: Msg, priority: Priority) -> None:
        if not self.active or self.tally.in_flight >= self._room(priority):
            await msg.nak()  # withdrawn, or the other priority took the slot meanwhile
            return
        self.tally.in_flight += 1
        self.tally.taken += 1
        self._changed()
        self._spawn(self._run(msg))

    async def _run(self, msg: Msg) -> None:
        try:
            await self._serve(msg)
        finally:
            self.tally.in_flight -= 1
            self._changed()
            self.tally.changed()

    async def _pending(self, consumer: str) -> int:
        try:
            info = await self._js.consumer_info(self._subjects.work_stream, consumer, timeout=1.0)
        except (nats.errors.Error, OSError):
            return 0
        return int(info.num_pending or 0)
