"""The stats recorder: request events from the durable stream into Postgres, in batches.

Events are acknowledged only after their batch is committed, and a row's key (request
id and event time) makes a redelivered event a no-op: with Postgres down, events wait
in the stream and every row arrives once it is back, none twice. An event that cannot
be a row is set aside in `dead_letters` (see `actors.store.sink`). The recorder also
answers `<prefix>.v1.stats` from the table, with its own state beside the figures.
"""

from __future__ import annotations

import datetime as dt
import time

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from actors.runtime.metrics import Metrics
from actors.store.sink import ACQUIRE_TIMEOUT_S, EventSink, unreachable_as
from bus.actor import Actor
from bus.config import Config
from bus.subjects import Subjects
from schemas import FleetStats, RecorderState, StatsRow, encode
from schemas.internal import RequestEvent, decode_event

__all__ = ["WINDOWS", "Recorder"]

_CONSUMER = "recorder"
# The loop writing events, by its name in `Actor.loops` (and the loop metrics).
_SINK_LOOP = "sink"
# Windows `llm.v1.stats` reports, by name.
WINDOWS = {"1m": dt.timedelta(minutes=1), "1h": dt.timedelta(hours=1), "1d": dt.timedelta(days=1)}
_INSERT = """
INSERT INTO ollama_performance (
    request_id, at, kind, model, host, outcome, error_code, latency_ms, ttft_ms,
    prompt_tokens, output_tokens, attempt, cached, fallback_from, template
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
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

_DEAD_LETTERS = "SELECT count(*)::int FROM dead_letters WHERE consumer = $1"


def _row(event: RequestEvent) -> tuple[object, ...]:
    # Raises for an `at` no datetime holds (OSError, OverflowError): set aside, then.
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
        event.template,
    )


class Recorder(Actor):
    """Writes every request event to `ollama_performance`; answers the stats subject."""

    name = "recorder"

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        config: Config,
        pool: asyncpg.Pool,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(nc, subjects)
        self.pool = pool
        self.sink = EventSink(
            nc.jetstream(),
            subjects,
            durable=_CONSUMER,
            subject=subjects.event("request"),
            config=config.recorder,
            pool=pool,
            log=self.log,
            metrics=metrics,
        )

    @property
    def written(self) -> int:
        """Events written since start."""
        return self.sink.written

    async def setup(self) -> None:
        await self.sink.open()
        self.supervise(_SINK_LOOP, lambda: self.sink.run(self._decode, self._write))
        await self.serve(self.subjects.stats, self._stats, queue=_CONSUMER)

    async def before_drain(self) -> None:
        self.sink.stop()

    async def teardown(self) -> None:
        await self.sink.close()

    async def reconnected(self) -> None:
        await self.sink.ensure_consumer()

    def _decode(self, msg: Msg) -> tuple[object, ...]:
        """One event as the row of it."""
        return _row(decode_event(msg.data))

    async def _write(self, rows: list[tuple[object, ...]]) -> None:
        """Insert rows (a batch, or one); a row already there is left as it is."""
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await conn.executemany(_INSERT, rows)
        self.log.debug("events_recorded", rows=len(rows))

    def _own_state(self, dead_letters: int) -> RecorderState:
        loop = self.loops[_SINK_LOOP]
        return RecorderState(
            running=loop.running > 0,
            restarts=loop.restarts,
            last_error=loop.last_error or None,
            failed_at=loop.failed_at,
            written=self.sink.written,
            set_aside=self.sink.set_aside,
            dead_letters=dead_letters,
        )

    async def _stats(self, msg: Msg) -> bytes:
        """Figures per model and per host for each window, from the table."""
        windows: dict[str, list[StatsRow]] = {}
        with unreachable_as("the stats database"):
            async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                for name, span in WINDOWS.items():
                    records = await conn.fetch(_STATS, span)
                    windows[name] = [
                        StatsRow(**{k: v for k, v in r.items() if v is not None}) for r in records
                    ]
                dead_letters = await conn.fetchval(_DEAD_LETTERS, _CONSUMER)
        state = self._own_state(dead_letters)
        return encode(FleetStats(windows=windows, at=time.time(), recorder=state))
