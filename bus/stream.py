"""Reading a request's stream: chunks in `seq` order to the one ending, across gaps,
reconnections and replays; a reasoning chain's steps too."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from bus.errors import Internal, Timeout, Unavailable, error_from_wire
from bus.subjects import Subjects
from schemas import Chunk, Done, Error, StreamMessage, decode_stream
from schemas.reasoning import Step

__all__ = ["ChainStream", "ChunkStream", "Inbox", "Stream", "listen", "replay"]

# How long a gap in a live stream may stay open before the stored copy is read, and how
# often a stream waiting for its next message looks whether the connection came back.
_GAP_WAIT_S = 1.0
_LOOK_EVERY_S = 1.0


def _reconnects(nc: NATS) -> int:
    """How often `nc` reconnected (a connection ollamesh opened counts them)."""
    return int(getattr(nc, "reconnects", 0))


class Inbox:
    """A subscription whose messages nats-py's callback puts in a queue of ours, so that
    reading one already there takes no task and no timer (nats-py's `next_msg` makes a
    task, a uuid and a `wait_for` for every message: a third of a gateway's CPU)."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._messages: deque[Msg] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.sub: Subscription | None = None

    async def deliver(self, msg: Msg) -> None:
        """nats-py's callback: keep `msg`, wake the reader."""
        self._messages.append(msg)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float) -> Msg:
        """The next message; `TimeoutError` after `timeout` seconds; a closed connection
        is nats-py's `ConnectionClosedError`. A cancel always ends the wait (a message
        that came meanwhile stays for the next read)."""
        if not self._messages:
            if self._nc.is_closed:
                raise nats.errors.ConnectionClosedError
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            finally:
                self._waiter = None
        return self._messages.popleft()

    async def close(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()


async def listen(nc: NATS, subject: str) -> Inbox:
    """An inbox on `subject`, subscribed when this returns."""
    inbox = Inbox(nc)
    inbox.sub = await nc.subscribe(subject, cb=inbox.deliver)
    return inbox


async def replay(nc: NATS, subjects: Subjects, request_id: str) -> Inbox:
    """Follow a request's stream from its first stored message, then live."""
    inbox = Inbox(nc)
    inbox.sub = await nc.jetstream().subscribe(
        subjects.stream(request_id),
        stream=subjects.chunk_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=inbox.deliver,
    )
    return inbox


class Stream:
    """The messages of one request's stream, in `seq` order, to its `done` or error.

    Messages are put back in `seq` order and a repeated one is skipped: after a server
    restart a lost chunk is sent again, after later ones. A gap that stays open for
    `_GAP_WAIT_S`, or a reconnection of the client (messages sent meanwhile never came),
    makes the stream read the stored copy instead. After the loop, `done` holds the
    final message; a failure ends it with the matching exception (`UpstreamError`,
    `Cancelled`, ...).
    """

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        inbox: Inbox,
        request_id: str,
        *,
        model: str = "",
        from_seq: int = 1,
        timeout: float,
        replaying: bool = False,
        on_close: Callable[[Stream], None] | None = None,
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._inbox = inbox
        self.request_id = request_id
        self.model = model
        self.done: Done | None = None
        self._next = from_seq
        self._timeout = timeout
        self._closed = False
        self._replaying = replaying
        self._on_close = on_close
        # Messages that came before their turn, by seq; when the oldest gap opened.
        self._ahead: dict[int, StreamMessage] = {}
        self._gap_since: float | None = None
        self._reconnects = _reconnects(nc)

    async def _advance(self) -> Chunk | Step:
        """The next chunk or step; StopAsyncIteration after `done`."""
        while not self._closed:
            message = self._ahead.pop(self._next, None) or await self._receive()
            if message is None:
                continue
            seq = message.seq or self._next
            if seq < self._next:
                if isinstance(message, Chunk | Step):
                    continue  # before `from_seq`, or seen already
                seq = self._next  # the ending, resumed from past it
            if seq > self._next:
                self._ahead[seq] = message
                self._gap_since = self._gap_since or time.monotonic()
                continue
            self._gap_since = None if not self._ahead else time.monotonic()
            match message:
                case Chunk() | Step():
                    self._next += 1
                    return message
                case Done():
                    self.done = message
                    await self.aclose()
                case Error():
                    await self.aclose()
                    raise error_from_wire(message)
        raise StopAsyncIteration

    async def _receive(self) -> StreamMessage | None:
        """The next message from the subscription; None when it is time to look at the
        stored stream instead (a gap left open, a reconnection)."""
        deadline = time.monotonic() + self._timeout
        while True:
            now = time.monotonic()
            if not self._replaying and (
                _reconnects(self._nc) != self._reconnects
                or (self._gap_since is not None and now - self._gap_since >= _GAP_WAIT_S)
            ):
                await self._refill()
                return None
            wait = min(deadline - now, _LOOK_EVERY_S)
            if wait <= 0:
                await self.aclose()
                raise Timeout(
                    f"no message on the stream for {self._timeout:.0f}s",
                    request_id=self.request_id,
                )
            try:
                msg = await self._inbox.next(wait)
            except TimeoutError:
                continue
            except nats.errors.Error as exc:  # the connection closed for good
                await self.aclose()
                raise Unavailable(f"the stream broke off: {exc!r}") from exc
            try:
                return decode_stream(msg.data)
            except msgspec.DecodeError as exc:
                await self.aclose()
                raise Internal(f"unreadable stream message: {exc}") from exc

    async def _refill(self) -> None:
        """Replace the live subscription by a replay of the stored stream (then live)."""
        old = self._inbox
        self._inbox = await replay(self._nc, self._subjects, self.request_id)
        self._replaying = True
        self._gap_since = None
        await old.close()

    async def text(self) -> str:
        """Read the rest of the stream and return its text."""
        parts: list[str] = []
        while True:
            try:
                message = await self._advance()
            except StopAsyncIteration:
                return "".join(parts)
            if isinstance(message, Chunk):
                parts.append(message.text)

    async def cancel(self) -> None:
        """Ask ollamesh to stop this request; the stream then ends with `Cancelled`."""
        await self._nc.publish(self._subjects.cancel(self.request_id), b"")

    async def aclose(self) -> None:
        """Stop listening (the request itself goes on unless cancelled)."""
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close(self)
            await self._inbox.close()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class ChunkStream(Stream):
    """A model's answer: iterate it for `Chunk`s; after the loop, `done` has the stats."""

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            message = await self._advance()
            if isinstance(message, Chunk):
                return message

    async def __aenter__(self) -> ChunkStream:
        return self


class ChainStream(Stream):
    """A reasoning chain: iterate it for its `Step`s as they change and then the answer's
    `Chunk`s; after the loop, `done` has the chain's steps, answer and figures."""

    def __aiter__(self) -> ChainStream:
        return self

    async def __anext__(self) -> Chunk | Step:
        return await self._advance()

    async def __aenter__(self) -> ChainStream:
        return self
