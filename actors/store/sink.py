"""Events from the durable stream into Postgres, in batches, with nothing lost.

A batch is acknowledged only after its write committed; while Postgres is unreachable
the batch is kept (its events marked in progress) and retried with backoff, and events
behind it wait in the stream. Writes must be idempotent: a batch cut short by a crash
is delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from bus.config import RecorderConfig
from bus.subjects import Subjects

__all__ = ["ACQUIRE_TIMEOUT_S", "DOWN", "EventSink"]

# Failures that keep a batch waiting for the next try: Postgres unreachable, restarting,
# or missing the schema. Rows come from validated events, so a server error is an outage
# to wait out (and log), never a reason to drop them.
DOWN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError, nats.errors.Error)

# The longest a write waits for a free connection before it counts as an outage.
ACQUIRE_TIMEOUT_S = 10.0

# Writes a batch; raises one of DOWN to have it retried.
Write = Callable[[list[Msg]], Awaitable[None]]


class EventSink:
    """One durable consumer of `subject` on the event stream, written out batch by batch."""

    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        durable: str,
        subject: str,
        config: RecorderConfig,
        log: structlog.BoundLogger,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._durable = durable
        self._subject = subject
        self._cfg = config
        self._log = log
        self._running = True
        self.written = 0

    async def open(self) -> None:
        """Create the durable consumer if needed and bind to it."""
        config = ConsumerConfig(
            durable_name=self._durable,
            filter_subject=self._subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            # A batch is acknowledged after its commit; redelivery waits well past that.
            ack_wait=max(30.0, 10 * self._cfg.flush_s),
            max_deliver=-1,
            max_ack_pending=-1,
        )
        try:
            await self._js.add_consumer(self._subjects.event_stream, config)
        except BadRequestError as exc:
            self._log.info("consumer_exists", consumer=self._durable, note=exc.description)
        self._psub = await self._js.pull_subscribe_bind(
            durable=self._durable, stream=self._subjects.event_stream
        )

    def stop(self) -> None:
        """Finish the batch in hand (unless Postgres is down) and stop."""
        self._running = False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._psub.unsubscribe()

    async def run(self, write: Write) -> None:
        """Fetch a batch, write it, acknowledge it; until stopped."""
        while self._running:
            try:
                msgs = await self._psub.fetch(self._cfg.batch_max, timeout=self._cfg.flush_s)
            except nats.errors.TimeoutError:
                continue
            except nats.errors.Error as exc:
                self._log.warning("events_fetch_failed", error=repr(exc))
                await asyncio.sleep(self._cfg.retry_s)
                continue
            if not await self._write(write, msgs):
                return  # stopping: unacknowledged, so the next consumer writes them
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.ack()
            self.written += len(msgs)

    async def _write(self, write: Write, msgs: list[Msg]) -> bool:
        """Write `msgs`, retrying while the store is down; False if stopped first."""
        backoff = self._cfg.retry_s
        while True:
            try:
                await write(msgs)
                return True
            except DOWN as exc:
                self._log.warning("write_delayed", events=len(msgs), error=repr(exc))
            if not self._running:
                return False
            for msg in msgs:  # keep them from being redelivered meanwhile
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            await asyncio.sleep(backoff)
            backoff = min(self._cfg.retry_max_s, backoff * 2)
