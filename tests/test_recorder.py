"""The stats recorder and Postgres: migrations, every event as one row, stats, outages."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from actors.store import EmbeddedPostgres, migrate, open_pool
from actors.store.database import migrations
from bus.client import Client
from bus.errors import Timeout
from tests.helpers import eventually

MODEL = "llama3.2:3b"
MODELS = [MODEL, "qwen2.5:7b"]
WITH_RECORDER = ("router", "executor", "recorder")


async def count_rows(url: str) -> tuple[int, int]:
    """Rows in ollama_performance, and distinct request ids among them."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT request_id) AS ids FROM ollama_performance"
        )
    finally:
        await conn.close()
    return row["n"], row["ids"]


async def test_migrations_apply_once(database_url: str) -> None:
    """A first start creates every table; a second start changes nothing."""
    pool = await open_pool(database_url)
    try:
        assert await migrate(pool) == []  # open_pool already applied them
        async with pool.acquire() as conn:
            tables = {
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            versions = [
                r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
            ]
    finally:
        await pool.close()
    assert {"ollama_prompts", "ollama_performance", "ollama_cache"} <= tables
    assert versions == [v for v, _, _ in migrations()]


async def test_every_request_becomes_one_row_and_stats_add_up(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """Twelve requests (two of them failing) give twelve rows; `llm.v1.stats` counts them
    per model and per host."""
    sim = await sim_factory(models=MODELS)
    await stack_factory(
        [sim.url], actors=WITH_RECORDER, database={"url": database_url}, recorder={"flush_s": 0.2}
    )
    for i in range(10):
        await client.generate(MODEL, f"q{i}", options={"num_predict": 4})
    for i in range(2):
        with pytest.raises(Timeout):
            await client.generate(
                "qwen2.5:7b", f"bad{i}", options={"num_predict": 4}, deadline_ms=1, fallback=False
            )

    async def all_written() -> bool:
        return await count_rows(database_url) == (12, 12)

    await eventually(all_written)
    stats = await client.stats()
    by_model = {r.model: r for r in stats.windows["1m"] if r.model}
    assert by_model[MODEL].requests == 10 and by_model[MODEL].success_rate == 1.0
    assert by_model[MODEL].latency_ms_p99 >= by_model[MODEL].latency_ms_p50 > 0
    assert by_model[MODEL].tokens_per_s > 0
    assert by_model["qwen2.5:7b"].success_rate == 0.0
    by_host = {r.host: r for r in stats.windows["1d"] if r.host}
    assert by_host[sim.url].requests == 12


async def test_postgres_down_loses_nothing_and_duplicates_nothing(
    tmp_path, sim_factory, stack_factory, client: Client
) -> None:
    """Requests go on while Postgres is down; once it is back every row arrives, once."""
    pg = EmbeddedPostgres(tmp_path / "pg")
    url = await pg.start()
    sim = await sim_factory(models=MODELS)
    try:
        stack = await stack_factory(
            [sim.url],
            actors=WITH_RECORDER,
            database={"url": url},
            recorder={"flush_s": 0.2, "retry_s": 0.1, "retry_max_s": 0.3},
        )
        await client.generate(MODEL, "before", options={"num_predict": 2})
        await eventually(lambda: _equals(count_rows(url), (1, 1)))
        await pg.stop()
        for i in range(20):
            await client.generate(MODEL, f"during {i}", options={"num_predict": 2})
        assert stack.recorder is not None and stack.recorder.written == 1
        url = await pg.start()
        await eventually(lambda: _equals(count_rows(url), (21, 21)), timeout=20)
    finally:
        await pg.stop()


async def _equals(got: asyncio.Future[tuple[int, int]] | object, want: tuple[int, int]) -> bool:
    try:
        return await got == want  # type: ignore[misc]
    except (OSError, asyncpg.PostgresError):
        return False
