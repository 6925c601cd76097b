"""The stats recorder: request events from the durable stream into Postgres, in batches.

Events are acknowledged only after their batch is committed, and a row's key (request
id and event time) makes a redelivered event a no-op: with Postgres down, events wait
in the stream and every row arrives once it is back, none twice. The recorder also
answers `<prefix>.v1.stats` from the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time

import asyncpg
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from bus.actor import Actor
from bus.config import Config
from bus.errors import Unavailable
from bus.subjects import Subjects
from schemas import FleetStats, RequestEvent, StatsRow, decode_event, encode

__all__ = ["WINDOWS", "Recorder"]

_CONSUMER = "recorder"
# Windows `llm.v1.stats` reports, by name.
WINDOWS = {"1m": dt.timedelta(minutes=1), "1h": dt.timedelta(hours=1), "1d": dt.timedelta(days=1)}
# Failures that keep a batch waiting for the next try: Postgres unreachable, restarting,
# or missing the schema. Rows come from validated events, so a server error is an outage
# to wait out (and log), never a reason to drop them.
_DOWN = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError)

_INSERT = """
INSERT INTO ollama_performance (
    request_id, at, kind, model, host, outcome, error_code, latency_ms, ttft_ms,
    prompt_tokens, output_tokens, attempt, cached, fallback_from
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (request_id, at) DO NOTHING
"""

_STATS = """
SELECT model, host, count(*)::int AS requests,
    avg((outcome = 'ok')::int)::float8 AS success_rate,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS latency_ms_p50,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS latency_ms_p99,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_ms_p50,
    percentile_cont(0.99) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_ms_p99,
    (sum(output_tokens) FILTER (WHERE outcome = 'ok' AND NOT cached)
        / nullif(sum(latency_ms - coalesce(ttft_ms, 0))
            FILTER (WHERE outcome = 'ok' AND NOT cached), 0) * 1000)::float8 AS tokens_per_s,
    avg(cached::int)::float8 AS cache_hit_rate
FROM ollama_performance
WHERE at >= now() - $1::interval
GROUP BY GROUPING SETS ((model), (host))
ORDER BY model NULLS LAST, host
"""


def _row(event: RequestEvent) -> tuple[object, ...]:
    return (
        event.request_id,
        dt.datetime.fromtimestamp(event.at, dt.UTC),
        event.kind,
        event.model,
        event.host,
        event.outcome,
        None if event.outcome == "ok" else event.outcome,
        event.latency_ms,
        event.ttft_ms,
        event.prompt_tokens,
        event.output_tokens,
        event.attempt,
        event.cached,
        event.fallback_from,
    )


class Recorder(Actor):
    """Writes every request event to `ollama_performance`; answers the stats subject."""

    name = "recorder"

    def __init__(self, nc: NATS, subjects: Subjects, config: Config, pool: asyncpg.Pool) -> None:
        super().__init__(nc, subjects)
        self.cfg = config.recorder
        self.pool = pool
        self._running = True
        self.written = 0

    async def setup(self) -> None:
        js = self.nc.jetstream()
        config = ConsumerConfig(
            durable_name=_CONSUMER,
            filter_subject=self.subjects.event("request"),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            # A batch is acknowledged after its commit; redelivery waits well past that.
            ack_wait=max(30.0, 10 * self.cfg.flush_s),
            max_deliver=-1,
            max_ack_pending=-1,
        )
        try:
            await js.add_consumer(self.subjects.event_stream, config)
        except BadRequestError as exc:
            self.log.info("consumer_exists", consumer=_CONSUMER, note=exc.description)
        self._psub = await js.pull_subscribe_bind(
            durable=_CONSUMER, stream=self.subjects.event_stream
        )
        await self.serve(self.subjects.stats, self._stats, queue=_CONSUMER)
        self.spawn(self._record())

    async def before_drain(self) -> None:
        self._running = False

    async def teardown(self) -> None:
        with contextlib.suppress(Exception):
            await self._psub.unsubscribe()

    async def _record(self) -> None:
        """Fetch a batch, write it, acknowledge it; on failure keep it and retry."""
        while self._running:
            try:
                msgs = await self._psub.fetch(self.cfg.batch_max, timeout=self.cfg.flush_s)
            except nats.errors.TimeoutError:
                continue
            except nats.errors.Error as exc:
                self.log.warning("events_fetch_failed", error=repr(exc))
                await asyncio.sleep(self.cfg.retry_s)
                continue
            rows, good = [], []
            for msg in msgs:
                try:
                    rows.append(_row(decode_event(msg.data)))
                    good.append(msg)
                except msgspec.DecodeError as exc:
                    self.log.error("event_unreadable", error=str(exc))
                    await msg.term()
            if rows and not await self._write(rows, good):
                return  # stopping: unacknowledged, so the next recorder writes them
            for msg in good:
                await msg.ack()
            self.written += len(rows)
            self.log.debug("events_recorded", rows=len(rows))

    async def _write(self, rows: list[tuple[object, ...]], msgs: list[Msg]) -> bool:
        """Insert `rows`, retrying while Postgres is unreachable; False if stopped first."""
        backoff = self.cfg.retry_s
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await conn.executemany(_INSERT, rows)
                return True
            except _DOWN as exc:
                self.log.warning("recording_delayed", rows=len(rows), error=repr(exc))
            if not self._running:
                return False
            for msg in msgs:  # keep them from being redelivered meanwhile
                with contextlib.suppress(Exception):
                    await msg.in_progress()
            await asyncio.sleep(backoff)
            backoff = min(self.cfg.retry_max_s, backoff * 2)

    async def _stats(self, msg: Msg) -> bytes:
        """Figures per model and per host for each window, from the table."""
        windows: dict[str, list[StatsRow]] = {}
        try:
            async with self.pool.acquire() as conn:
                for name, span in WINDOWS.items():
                    records = await conn.fetch(_STATS, span)
                    windows[name] = [
                        StatsRow(**{k: v for k, v in r.items() if v is not None}) for r in records
                    ]
        except _DOWN as exc:
            raise Unavailable(f"the stats database is unreachable: {exc}") from exc
        return encode(FleetStats(windows=windows, at=time.time()))
