"""The cache keeper: stores answers executors hand over, purges, invalidates, restores.

Executors publish each cacheable answer on `<prefix>.v1.events.cache` (captured by the
durable event stream). The keeper writes it to the shared tier (a NATS key-value bucket
every router reads, with the cache's TTL) and to `ollama_cache` in Postgres, the durable
copy: at start it puts the unexpired rows back into the shared tier, so the cache
survives a restart of everything. Expired rows are purged on a schedule, and the table
is kept under `cache.max_bytes` by dropping the oldest answers.

Each readable answer goes to the shared tier once per delivery, before its row: a batch
split to find a row the table refuses (see `actors.store.sink`), or retried while
Postgres is down, puts nothing twice, and the refused answer is still served from the
shared tier until its TTL, only its durable copy is set aside.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from actors.runtime.metrics import Metrics
from actors.store.sink import ACQUIRE_TIMEOUT_S, DOWN, EventSink
from bus.actor import Actor
from bus.config import Config
from bus.errors import Unavailable
from bus.rpc import decode_body
from bus.subjects import Subjects, model_token
from schemas import encode
from schemas.cache import Invalidate, Invalidated
from schemas.internal import decode_answer, decode_cache_store

__all__ = ["CacheKeeper"]

_CONSUMER = "cache-keeper"

_UPSERT = """
INSERT INTO ollama_cache (model, key, kind, answer, size, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (model, key) DO UPDATE
SET answer = excluded.answer, size = excluded.size, created_at = excluded.created_at,
    expires_at = excluded.expires_at
"""

# Beyond the size bound, the oldest answers go first.
_TRIM = """
DELETE FROM ollama_cache WHERE (model, key) IN (
    SELECT model, key FROM (
        SELECT model, key, sum(size) OVER (ORDER BY created_at DESC) AS kept
        FROM ollama_cache
    ) ranked WHERE kept > $1
)
"""


@dataclass
class _Pending:
    """One delivered answer on its way to both tiers."""

    key: str
    value: bytes
    row: tuple[object, ...]
    # Put in the shared tier already (by an earlier try at this delivery).
    shared: bool = False


class CacheKeeper(Actor):
    """Keeps the shared and durable tiers of the answer cache."""

    name = "cache"

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        config: Config,
        pool: asyncpg.Pool,
        kv: KeyValue,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(nc, subjects)
        self.cfg = config.cache
        self.pool = pool
        self.kv = kv
        self.sink = EventSink(
            nc.jetstream(),
            subjects,
            durable=_CONSUMER,
            subject=subjects.event("cache"),
            config=config.recorder,
            pool=pool,
            log=self.log,
            metrics=metrics,
        )

    async def setup(self) -> None:
        await self.sink.open()
        await self.restore()
        await self.serve(self.subjects.cache_invalidate, self._invalidate, queue=_CONSUMER)
        self.supervise("sink", lambda: self.sink.run(self._decode, self._store))
        self.supervise("purge", self._purge_forever, endless=True)

    async def before_drain(self) -> None:
        self.sink.stop()

    async def teardown(self) -> None:
        await self.sink.close()

    async def reconnected(self) -> None:
        await self.sink.ensure_consumer()

    def _decode(self, msg: Msg) -> _Pending:
        """One handed-over answer, as its shared-tier value and its row."""
        store = decode_cache_store(msg.data)
        value = encode(store.answer)
        created = dt.datetime.fromtimestamp(store.at or time.time(), dt.UTC)
        expires = created + dt.timedelta(seconds=self.cfg.ttl_s)
        answer = store.answer
        row = (answer.model, store.key, answer.kind, value, len(value), created, expires)
        return _Pending(key=store.key, value=value, row=row)

    async def _store(self, answers: list[_Pending]) -> None:
        """Put answers (a batch, or one) in the shared tier, then in the table."""
        for answer in answers:
            if not answer.shared:
                # Replaces the generating request's marker: later requests get the answer.
                await self.kv.put(answer.key, answer.value)
                answer.shared = True
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await conn.executemany(_UPSERT, [answer.row for answer in answers])

    async def restore(self) -> int:
        """Put the table's unexpired answers back into the shared tier; return how many."""
        restored = 0
        try:
            async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                records = await conn.fetch(
                    "SELECT key, answer FROM ollama_cache WHERE expires_at > now()"
                    " ORDER BY created_at DESC"
                )
            for record in records:
                decode_answer(record["answer"])  # never restore what a router could not read
                await self.kv.put(record["key"], bytes(record["answer"]))
                restored += 1
        except (*DOWN, msgspec.DecodeError) as exc:
            self.log.warning("cache_restore_failed", error=repr(exc), restored=restored)
        if restored:
            self.log.info("cache_restored", answers=restored)
        return restored

    async def purge(self) -> int:
        """Delete expired rows, then the oldest beyond the size bound; return how many."""
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            expired = await conn.execute("DELETE FROM ollama_cache WHERE expires_at <= now()")
            trimmed = await conn.execute(_TRIM, self.cfg.max_bytes)
        return int(expired.split()[-1]) + int(trimmed.split()[-1])

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.purge_every_s)
            try:
                if removed := await self.purge():
                    self.log.info("cache_purged", rows=removed)
            except DOWN as exc:
                self.log.warning("cache_purge_failed", error=repr(exc))

    async def _invalidate(self, msg: Msg) -> bytes:
        """Drop one model's answers (or all) from every tier."""
        request = decode_body(Invalidate, msg.data, "invalidate")
        model = request.model
        try:
            async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                if model is None:
                    status = await conn.execute("DELETE FROM ollama_cache")
                else:
                    status = await conn.execute("DELETE FROM ollama_cache WHERE model = $1", model)
            await self._purge_shared(model)
        except DOWN as exc:
            raise Unavailable(f"the cache could not be invalidated: {exc}") from exc
        await self.nc.publish(self.subjects.cache_invalidated, (model or "").encode())
        removed = int(status.split()[-1])
        self.log.info("cache_invalidated", model=model, rows=removed)
        return encode(Invalidated(model=model, removed=removed))

    async def _purge_shared(self, model: str | None) -> None:
        # Listed whole and filtered here: nats-py's key filters match nothing (2.16).
        prefix = f"{model_token(model)}." if model else ""
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return
        for key in keys:
            if key.startswith(prefix):
                await self.kv.purge(key)
