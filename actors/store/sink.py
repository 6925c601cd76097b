"""Events from the durable stream into Postgres, in batches, with nothing lost.

A batch is acknowledged only after its write committed. While Postgres is unreachable
the batch is kept (its events marked in progress) and retried with backoff, and events
behind it wait in the stream. An event the store refuses (or that does not even decode)
is found by writing the batch's events one at a time, set aside in `dead_letters` with
the reason, logged, counted and acknowledged: one bad event never holds up the others.
Anything else (a missing table, a bug) hands the batch back to the stream and crashes
the loop, for its actor's supervisor to log, count and restart. Writes must be
idempotent: a batch cut short by a crash is delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from actors.runtime.metrics import Metrics
from actors.store.failures import BROKEN, Verdict, reason, verdict
from bus.config import RecorderConfig
from bus.errors import Unavailable, logged
from bus.subjects import Subjects

__all__ = ["ACQUIRE_TIMEOUT_S", "DOWN", "Decode", "EventSink", "Write", "unreachable_as"]

# Failures of the store that a request handler reports as `unavailable`. The sink itself
# tells an outage from a refused row (see `actors.store.failures`).
DOWN = (OSError, TimeoutError, *BROKEN, asyncpg.PostgresError, nats.errors.Error)


@contextlib.contextmanager
def unreachable_as(what: str) -> Iterator[None]:
    """A database outage inside the block is `unavailable`, naming `what` ("the stats
    database"): what a request answered from Postgres gets while Postgres is down."""
    try:
        yield
    except DOWN as exc:
        raise Unavailable(f"{what} is unreachable: {exc}") from exc


# The longest a write waits for a free connection before it counts as an outage.
ACQUIRE_TIMEOUT_S = 10.0

Row = TypeVar("Row")
# Turns one event into what `Write` takes. No I/O: whatever it raises is about the event,
# which is set aside as unreadable.
Decode = Callable[[Msg], Row]
# Writes the rows of a batch, or of one event when a batch is split to find a refused one.
Write = Callable[[list[Row]], Awaitable[None]]

_SET_ASIDE = """
INSERT INTO dead_letters (consumer, stream_seq, subject, payload, reason)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (consumer, stream_seq) DO NOTHING
"""


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
        pool: asyncpg.Pool,
        log: structlog.BoundLogger,
        metrics: Metrics | None = None,
    ) -> None:
        self._js = js
        self._subjects = subjects
        self._durable = durable
        self._subject = subject
        self._cfg = config
        self._pool = pool
        self._log = log
        self._metrics = metrics
        self._running = True
        # Events written, and events set aside in dead_letters, since start.
        self.written = 0
        self.set_aside = 0

    async def open(self) -> None:
        """Create the durable consumer if needed and bind to it."""
        await self.ensure_consumer()
        self._psub = await self._js.pull_subscribe_bind(
            durable=self._durable, stream=self._subjects.event_stream
        )

    async def ensure_consumer(self) -> None:
        """Create the durable consumer unless it exists (again after a server lost it:
        the bound subscription pulls by name, so it goes on with the new one)."""
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

    def stop(self) -> None:
        """Finish the batch in hand (unless Postgres is down) and stop."""
        self._running = False

    async def close(self) -> None:
        with logged(self._log, "events_unsubscribe_failed"):
            await self._psub.unsubscribe()

    async def run(self, decode: Decode[Row], write: Write[Row]) -> None:
        """Fetch a batch, write it, acknowledge it; until stopped."""
        while self._running:
            try:
                msgs = await self._psub.fetch(self._cfg.batch_max, timeout=self._cfg.flush_s)
            except TimeoutError:
                # Nothing came: nats-py raises its own TimeoutError or a bare asyncio one.
                continue
            except nats.errors.Error as exc:
                self._log.warning("events_fetch_failed", error=repr(exc))
                await asyncio.sleep(self._cfg.retry_s)
                continue
            if not await self._settle(msgs, decode, write):
                return  # stopping: unacknowledged, so the next consumer writes them
            # Written: an ack that does not arrive gets them delivered again, and writing
            # them again changes nothing.
            with logged(self._log, "events_ack_failed", events=len(msgs)):
                for msg in msgs:
                    await msg.ack()

    async def _settle(self, msgs: list[Msg], decode: Decode[Row], write: Write[Row]) -> bool:
        """Write `msgs` or set aside those refused, retrying while the store is down;
        False if stopped first. Any other failure hands the batch back and raises."""
        rows: list[tuple[Msg, Row]] = []
        unreadable: list[tuple[Msg, str]] = []
        for msg in msgs:
            try:
                rows.append((msg, decode(msg)))
            except Exception as exc:  # no I/O in decode: it is about this event
                unreadable.append((msg, f"unreadable: {reason(exc)}"))
        backoff = self._cfg.retry_s
        while True:
            try:
                refused = await self._write(rows, write)
                await self._set_aside(unreadable + refused)
            except Exception as exc:
                if verdict(exc) is not Verdict.OUTAGE:
                    # To the next fetch, after the supervisor's restart (or, if the nak is
                    # lost, after the ack wait).
                    with logged(self._log, "events_nak_failed", events=len(msgs)):
                        for msg in msgs:
                            await msg.nak()
                    raise
                self._log.warning("write_delayed", events=len(msgs), error=repr(exc))
            else:
                self.written += len(rows) - len(refused)
                return True
            if not self._running:
                return False
            # Keep them from being delivered again meanwhile (if this fails, they are,
            # and the next fetch writes them: idempotent).
            with logged(self._log, "events_in_progress_failed", events=len(msgs)):
                for msg in msgs:
                    await msg.in_progress()
            await asyncio.sleep(backoff)
            backoff = min(self._cfg.retry_max_s, backoff * 2)

    async def _write(self, rows: list[tuple[Msg, Row]], write: Write[Row]) -> list[tuple[Msg, str]]:
        """Write `rows` as one batch or, if the store refuses it, one by one; return the
        events refused on their own, with why."""
        if not rows:
            return []
        try:
            await write([row for _, row in rows])
            return []
        except Exception as exc:
            if verdict(exc) is not Verdict.REFUSED:
                raise
            if len(rows) == 1:
                return [(rows[0][0], reason(exc))]
            self._log.info("batch_refused", events=len(rows), error=reason(exc), then="one by one")
        refused = []
        for msg, row in rows:
            try:
                await write([row])
            except Exception as exc:
                if verdict(exc) is not Verdict.REFUSED:
                    raise
                refused.append((msg, reason(exc)))
        return refused

    async def _set_aside(self, events: list[tuple[Msg, str]]) -> None:
        """Keep `events` in dead_letters with why; log and count each once it committed."""
        if not events:
            return
        letters = [
            (self._durable, msg.metadata.sequence.stream, msg.subject, msg.data, why)
            for msg, why in events
        ]
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await conn.executemany(_SET_ASIDE, letters)
        for _, seq, subject, payload, why in letters:
            self._log.warning(
                "event_set_aside", consumer=self._durable, subject=subject, stream_seq=seq,
                bytes=len(payload), reason=why,
            )  # fmt: skip
        self.set_aside += len(letters)
        if self._metrics is not None:
            self._metrics.set_aside.labels(self._durable).inc(len(letters))
