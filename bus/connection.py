"""Connect to NATS with reconnects, logged connection events and a clean drain.

`connect` returns a `Connection`: nats-py's client with three things added that a
long-running process needs.

- Its size check counts headers too. nats-py compares only the payload with the
  server's `max_payload`; a message whose headers push it over is refused by the server,
  which then closes the connection for good. Here such a publish raises
  `MaxPayloadError` before anything is sent, whoever publishes (replies, JetStream
  publishes and requests included).
- `lost` is set (and `wait_lost` returns) when the connection closes without the process
  asking (the server closed it for a protocol violation, or reconnecting gave up): a
  process that can no longer talk to NATS must end, not live on answering nothing.
- `on_reconnect` registers callbacks run after every reconnection, for state that lives
  on the server and may be gone after a restart (memory-backed buckets, watchers);
  `wait_connected` waits for the connection to be up again.
- Credentials (`bus.credentials`): from the caller, else from the environment; a server
  that refuses them is `Refused`, one line that names who was refused, at once.
- `publish_once` is for messages a stream must keep (request events): published at once
  with no round trip, stored at most once (its message id), and published again after a
  reconnection if it left within `CRASH_WINDOW_S` before the connection dropped, or
  after: what was written into a connection as its server died is lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.credentials import Credentials, from_environment
from bus.errors import Refused, Unavailable

__all__ = [
    "CRASH_WINDOW_S",
    "NATS",
    "Connection",
    "close_within",
    "connect",
    "next_message",
    "publish_size",
]

_FIRST_CONNECT_ATTEMPTS = 2
# What the server says (in nats-py's errors) when it refuses credentials, and when it
# drops a message the connection's permissions do not allow.
_AUTHORIZATION_VIOLATION = "authorization violation"
_PERMISSIONS_VIOLATION = "permissions violation"
# nats-py skips its closed callback when flushing on the way out fails (the server
# reset the socket): how often `wait_lost` looks at the state itself.
_CLOSED_CHECK_S = 0.5
# What was published this long before the connection dropped may have been lost with
# it: nats-py sees a server stop or restart within milliseconds (the socket closes).
CRASH_WINDOW_S = 1.0
# `publish_once` keeps messages this long (while connected) to publish them again.
_KEEP_S = 5.0
# What a header block costs beyond its keys and values: `NATS/1.0\r\n`, `: ` and `\r\n`
# per header, and the closing `\r\n`.
_HEADER_LINE = len(b"NATS/1.0\r\n")
_PER_HEADER = len(b": \r\n")

Listener = Callable[[], Awaitable[None]]


def publish_size(payload: bytes, headers: dict[str, str] | None = None) -> int:
    """The size the server counts against `max_payload`: headers and payload together."""
    if not headers:
        return len(payload)
    block = (
        _HEADER_LINE
        + 2
        + sum(len(k.encode()) + len(str(v).encode()) + _PER_HEADER for k, v in headers.items())
    )
    return block + len(payload)


class Connection(NATS):
    """nats-py's client, with a size check that counts headers, `lost` and `on_reconnect`."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = asyncio.Event()
        self.reconnects = 0
        # When the connection last dropped (monotonic), for what to send again.
        self.dropped_at = 0.0
        self._up = asyncio.Event()
        self._closing = False
        self._listeners: list[Listener] = []
        self._notifying: set[asyncio.Task[None]] = set()
        # What `publish_once` sent lately: (when, subject, payload, headers).
        self._kept: collections.deque[tuple[float, str, bytes, dict[str, str]]] = (
            collections.deque()
        )

    @property
    def closing(self) -> bool:
        """Whether this process asked the connection to close (drain or close)."""
        return self._closing

    async def wait_lost(self) -> None:
        """Return once the connection has closed without this process asking."""
        while not self.lost.is_set():
            if self.is_closed and not self._closing:
                structlog.get_logger("bus.connection").error(
                    "nats_connection_lost", error=repr(self.last_error)
                )
                self.lost.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), _CLOSED_CHECK_S)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the connection is up (at once if it is); False after `timeout`."""
        if self.is_connected:
            return True
        try:
            await asyncio.wait_for(self._up.wait(), timeout)
        except TimeoutError:
            return False
        return self.is_connected

    def on_reconnect(self, listener: Listener) -> None:
        """Run `listener()` after every reconnection (its failures are logged, not raised)."""
        self._listeners.append(listener)

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        if headers and publish_size(payload, headers) > self.max_payload:
            raise nats.errors.MaxPayloadError
        await super().publish(subject, payload, reply, headers)

    async def publish_once(self, subject: str, payload: bytes, *, msg_id: str | None) -> None:
        """Publish on a stream-captured subject; stored at most once, and sent again
        after a reconnection if it left within `CRASH_WINDOW_S` before the drop or after.

        `msg_id` None: the stream may store a copy sent again twice (for a consumer that
        takes identical messages as one, such as the stats recorder).
        """
        headers = {"Nats-Msg-Id": msg_id} if msg_id else {}
        now = time.monotonic()
        self._kept.append((now, subject, payload, headers))
        while self.is_connected and self._kept and self._kept[0][0] < now - _KEEP_S:
            self._kept.popleft()
        with contextlib.suppress(
            nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError
        ):
            await self.publish(subject, payload, headers=headers or None)  # else: later

    async def _publish_kept(self) -> int:
        """Publish again what `publish_once` sent lately (the stream drops what it has)."""
        since = self.dropped_at - CRASH_WINDOW_S
        kept = [m for m in self._kept if m[0] >= since]
        for _, subject, payload, headers in kept:
            await self.publish(subject, payload, headers=headers or None)
        return len(kept)

    async def close(self) -> None:
        self._closing = True
        await super().close()

    async def drain(self) -> None:
        self._closing = True
        await super().drain()


def _refusal(exc: Exception) -> bool:
    """Whether `exc` is the server refusing the credentials (nats-py reports it as a bare
    error while connecting, as `AuthorizationError` afterwards)."""
    return isinstance(exc, nats.errors.AuthorizationError) or (
        _AUTHORIZATION_VIOLATION in str(exc).lower()
    )


async def connect(
    url: str,
    *,
    name: str,
    credentials: Credentials | None = None,
    connect_timeout: float = 5.0,
    **options: Any,
) -> Connection:
    """Connect to `url` as `credentials` (None: the environment's `NATS_*`); reconnect
    forever after the first success, log every change.

    Raises `Refused` when the server refuses the credentials (or a file they name cannot
    be read), `Unavailable` when no server answers within `connect_timeout`.
    """
    log = structlog.get_logger("bus.connection").bind(connection=name)
    if credentials is None:
        credentials = Credentials(**from_environment(os.environ))
    auth = credentials.options()
    nc = Connection()
    first_connect = True
    refusal: Exception | None = None  # the server's, during the first connect

    async def on_error(exc: Exception) -> None:
        nonlocal refusal
        if first_connect:
            # What failed is raised from the first connect, in one line.
            refusal = exc if _refusal(exc) else refusal
            log.debug("nats_connect_failed", error=repr(exc))
        elif _refusal(exc):
            log.error("nats_refused", credentials=credentials.describe(), error=repr(exc))
        elif _PERMISSIONS_VIOLATION in str(exc).lower():
            # A publish or subscribe this connection's role may not make: the server
            # drops it and says so; the request behind it, if any, will time out.
            log.error("nats_permission_denied", error=str(exc))
        else:
            log.warning("nats_error", error=repr(exc))

    async def on_disconnected() -> None:
        nc._up.clear()
        nc.dropped_at = time.monotonic()
        if nc.closing:
            log.debug("nats_disconnected", reason="closing")
        else:
            log.warning("nats_disconnected")

    async def notify() -> None:
        for listener in list(nc._listeners):  # first: they recreate what a server lost
            try:
                await listener()
            except Exception:
                log.exception("reconnect_listener_failed", listener=repr(listener))
        try:
            if sent := await nc._publish_kept():
                log.info("nats_resent", messages=sent)
        except Exception:
            log.exception("nats_resend_failed")

    async def on_reconnected() -> None:
        nc._up.set()
        nc.reconnects += 1
        where = nc.connected_url.geturl() if nc.connected_url else ""
        log.info("nats_reconnected", url=where, reconnects=nc.reconnects)
        # nats-py awaits this callback inside its reconnection: the listeners' own
        # requests must not hold it up.
        task = asyncio.get_running_loop().create_task(notify())
        nc._notifying.add(task)
        task.add_done_callback(nc._notifying.discard)

    async def on_closed() -> None:
        if nc.closing:
            log.debug("nats_closed")
            return
        log.error("nats_connection_lost", error=repr(nc.last_error), url=url)
        nc.lost.set()

    try:
        await nc.connect(
            # A cluster's nodes, comma-separated (the client also learns the others from
            # the server it reaches, and reconnects to any of them).
            servers=[u.strip() for u in url.split(",") if u.strip()],
            name=name,
            connect_timeout=connect_timeout,  # type: ignore[arg-type]  # nats-py takes floats
            allow_reconnect=True,
            # nats-py retries a first connect forever when this is -1: bound it here and
            # lift the bound once connected.
            max_reconnect_attempts=_FIRST_CONNECT_ATTEMPTS,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py takes floats
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            closed_cb=on_closed,
            **auth,
            **options,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        nc._closing = True  # a first connect that failed is not a connection lost
        if refusal is not None:
            raise Refused(
                f"NATS at {url} refused {credentials.describe()}: authorization violation"
            ) from refusal
        raise Unavailable(f"cannot reach NATS at {url}: {exc!r}") from exc
    first_connect = False
    nc.options["max_reconnect_attempts"] = -1
    nc._up.set()
    return nc


async def close_within(nc: NATS, timeout: float) -> None:
    """Drain `nc`, or close it if the drain does not end within `timeout` (then wait at
    most `timeout` more): a server that does not answer is not waited for."""

    def retrieve(task: asyncio.Future[None]) -> None:
        # A failure of a drain left behind is no "exception never retrieved".
        if not task.cancelled():
            task.exception()

    # Not `wait_for`: nats-py's drain takes a cancel as a cue to flush (up to 10 s).
    drain = asyncio.ensure_future(nc.drain())
    drain.add_done_callback(retrieve)
    await asyncio.wait({drain}, timeout=timeout)
    if not drain.done() or drain.cancelled() or drain.exception() is not None:
        drain.cancel()
        close = asyncio.ensure_future(nc.close())
        close.add_done_callback(retrieve)
        await asyncio.wait({close}, timeout=timeout)


async def next_message(sub: Subscription, timeout: float) -> Msg:
    """The next message of `sub`; `TimeoutError` after `timeout` seconds. A cancel of the
    caller always ends the wait (and leaves the message, if one came, to the next read).

    Not `sub.next_msg(timeout=...)`: its `asyncio.wait_for` (Python 3.11) drops a cancel
    that arrives together with a message, and the cancelled reader reads on.
    """
    async with asyncio.timeout(timeout):
        return await sub.next_msg(timeout=None)
