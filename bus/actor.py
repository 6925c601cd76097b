"""The actor runtime: lifecycle, handlers that never block their subscription, drain."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.discovery import Discovery, EndpointStats
from bus.errors import Internal, OllameshError, Overloaded, PayloadTooLarge
from bus.subjects import Subjects
from schemas import encode, http_status

__all__ = ["Actor", "Handler", "LoopStatus", "State", "reply_error", "send_reply"]

# A handler gets one message; for a request, the bytes it returns are the reply.
Handler = Callable[[Msg], Awaitable[bytes | None]]
# A background loop: a coroutine function that runs until its actor stops.
Loop = Callable[[], Coroutine[Any, Any, None]]

# The micro-service error header repeats the message: its start is enough there.
_HEADER_MESSAGE_MAX = 200
# A crashed loop is started again after this long, doubling up to the max; a loop that
# ran this long before crashing starts again from the shortest wait.
_RESTART_MIN_S = 0.1
_RESTART_MAX_S = 30.0
_RESTART_RESET_S = 60.0


class State(enum.StrEnum):
    """Where an actor is in its life."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


async def reply_error(
    nc: NATS, reply: str, exc: OllameshError, request_id: str | None = None
) -> None:
    """Answer a request with a typed `error` and the NATS micro-service error headers."""
    headers = {
        "Nats-Service-Error": exc.message[:_HEADER_MESSAGE_MAX],
        "Nats-Service-Error-Code": str(http_status(exc.code)),
    }
    await nc.publish(reply, encode(exc.to_wire(request_id)), headers=headers)


async def send_reply(nc: NATS, reply: str, data: bytes, request_id: str | None = None) -> None:
    """Answer a request with `data`, or with `payload_too_large` if the server would
    refuse a message that size (it would close the connection for good)."""
    try:
        await nc.publish(reply, data)
    except nats.errors.MaxPayloadError:
        limit = nc.max_payload
        exc = PayloadTooLarge(
            f"the answer is {len(data)} bytes, over the server's max_payload of {limit}",
            request_id=request_id,
        )
        await reply_error(nc, reply, exc, request_id)


@dataclass
class LoopStatus:
    """How one of an actor's background loops is doing (several may share a name)."""

    running: int = 0
    restarts: int = 0
    last_error: str = ""
    failed_at: float | None = None


class Actor:
    """Base of every actor: serves subjects, runs each message in its own bounded task.

    What happens when a handler raises: a request gets a typed `error` reply (an
    unexpected exception becomes `internal` and is logged with its traceback); a
    fire-and-forget message is logged and the actor keeps serving.
    """

    name: ClassVar[str] = "actor"

    def __init__(self, nc: NATS, subjects: Subjects, *, max_concurrent: int = 1024) -> None:
        self.nc = nc
        self.subjects = subjects
        self.log = structlog.get_logger(f"actors.{self.name}")
        self._max_concurrent = max_concurrent
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handling = 0
        self._state = State.NEW
        # Background loops by name, and those with no end of their own (cancelled at drain).
        self.loops: dict[str, LoopStatus] = {}
        self._endless: set[asyncio.Task[Any]] = set()
        self.discovery = Discovery(
            f"ollamesh-{self.name}",
            description=(type(self).__doc__ or "").strip().split("\n")[0],
            metadata={"prefix": subjects.prefix},
            loops=self.loops,
        )

    @property
    def state(self) -> State:
        return self._state

    async def start(self) -> None:
        """Set up subscriptions and background work; return when serving."""
        if self._state is not State.NEW:
            raise RuntimeError(f"{self.name} cannot start from state {self._state}")
        self._state = State.STARTING
        await self.setup()
        self._subs.extend(await self.discovery.start(self.nc))
        # A SUB sent just before flush() is not always registered when flush() returns
        # unless the loop yields once first (seen with nats-py).
        await asyncio.sleep(0)
        await self.nc.flush()
        self._state = State.RUNNING
        self.log.info("actor_started")

    async def setup(self) -> None:
        """Subscribe and start background tasks; subclasses override."""

    async def before_drain(self) -> None:
        """Stop taking new work (called first when stopping); subclasses override."""

    async def teardown(self) -> None:
        """Release resources after in-flight work ended; subclasses override."""

    async def reconnected(self) -> None:
        """The connection came back (streams and buckets are provisioned again by then):
        redo what the server may have lost; subclasses override."""

    async def serve(self, subject: str, handler: Handler, *, queue: str = "") -> Subscription:
        """Subscribe `handler` to `subject`; each message runs in its own task."""

        stats = self.discovery.endpoint(subject, queue)

        async def dispatch(msg: Msg) -> None:
            if self._handling >= self._max_concurrent:
                stats.record(0.0, "overloaded")
                await self._refuse(msg)
                return
            self._handling += 1
            self.spawn(self._handle(handler, msg, stats), counted=True)

        sub = await self.nc.subscribe(subject, queue=queue, cb=dispatch)
        self._subs.append(sub)
        return sub

    def spawn(self, coro: Coroutine[Any, Any, Any], *, counted: bool = False) -> asyncio.Task[Any]:
        """Run `coro` as a task the actor waits for when it stops."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)

        def finished(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if counted:
                self._handling -= 1
            if not t.cancelled() and (exc := t.exception()) is not None:
                self.log.error("task_failed", error=repr(exc), exc_info=exc)

        task.add_done_callback(finished)
        return task

    def supervise(self, name: str, loop: Loop, *, endless: bool = False) -> asyncio.Task[None]:
        """Run `loop()` in the background for as long as the actor runs.

        A loop that raises is logged with its traceback, counted in `loops[name]`, and run
        again after a backoff (0.1 s doubling to 30 s), never left dead in silence. An
        `endless` loop (one that never returns by itself) is cancelled when the actor
        starts draining; any other is waited for, like handlers.
        """
        status = self.loops.setdefault(name, LoopStatus())

        async def run() -> None:
            backoff = _RESTART_MIN_S
            while True:
                started = time.monotonic()
                status.running += 1
                try:
                    await loop()
                    return
                except Exception as exc:
                    status.restarts += 1
                    status.last_error = repr(exc)[:_HEADER_MESSAGE_MAX]
                    status.failed_at = time.time()
                    self.log.exception("loop_crashed", loop=name, restart_in_s=backoff)
                finally:
                    status.running -= 1
                if self._state not in (State.STARTING, State.RUNNING):
                    return
                if time.monotonic() - started >= _RESTART_RESET_S:
                    backoff = _RESTART_MIN_S
                await asyncio.sleep(backoff)
                backoff = min(_RESTART_MAX_S, backoff * 2)

        task = self.spawn(run())
        if endless:
            self._endless.add(task)
            task.add_done_callback(self._endless.discard)
        return task

    async def _handle(self, handler: Handler, msg: Msg, stats: EndpointStats) -> None:
        started = time.perf_counter()
        try:
            reply = await handler(msg)
        except OllameshError as exc:
            stats.record(time.perf_counter() - started, f"{exc.code}: {exc.message}")
            if msg.reply:
                await reply_error(self.nc, msg.reply, exc, exc.request_id)
            else:
                self.log.warning("message_failed", subject=msg.subject, error=repr(exc))
            return
        except Exception as exc:
            stats.record(time.perf_counter() - started, f"internal: {exc!r}")
            self.log.exception("handler_crashed", subject=msg.subject)
            if msg.reply:
                await reply_error(self.nc, msg.reply, Internal(f"{self.name} failed: {exc!r}"))
            return
        stats.record(time.perf_counter() - started)
        if reply is not None and msg.reply:
            await send_reply(self.nc, msg.reply, reply)

    async def _refuse(self, msg: Msg) -> None:
        exc = Overloaded(f"{self.name} is at its limit of {self._max_concurrent} in flight")
        exc.retry_after_ms = 100
        if msg.reply:
            await reply_error(self.nc, msg.reply, exc)
        else:
            self.log.warning("message_dropped", subject=msg.subject, reason="at capacity")

    async def stop(self, grace: float = 30.0) -> None:
        """Stop taking work, let in-flight work finish within `grace`, then release."""
        if self._state in (State.DRAINING, State.STOPPED):
            return
        self._state = State.DRAINING
        self.log.info("actor_draining", in_flight=len(self._tasks))
        await self.before_drain()
        for task in list(self._endless):
            task.cancel()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.drain()  # type: ignore[no-untyped-call]
        self._subs.clear()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                self.log.warning("actor_grace_expired", cancelled=len(pending))
                await asyncio.wait(pending, timeout=5.0)
        await self.teardown()
        self._state = State.STOPPED
        self.log.info("actor_stopped")
