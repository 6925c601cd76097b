"""The stats recorder and Postgres: migrations, every event as one row, stats, outages."""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
import pytest

from actors.cli import terminal
from actors.store import EmbeddedPostgres, migrate, open_pool
from actors.store.database import migrations
from bus.client import Client
from bus.connection import NATS
from bus.errors import Timeout
from bus.subjects import Subjects
from schemas import encode
from schemas.internal import RequestEvent
from tests.conftest import StackFactory
from tests.helpers import eventually, query

MODEL = "llama3.2:3b"
MODELS = [MODEL, "qwen2.5:7b"]
WITH_RECORDER = ("router", "executor", "recorder")
# A stack of the recorder alone, fed events straight on the event subject: no host is asked.
HOSTS = ["http://127.0.0.1:9"]


async def count_rows(url: str) -> tuple[int, int]:
    """Rows in ollama_performance, and distinct request ids among them."""
    [row] = await query(
        url, "SELECT count(*) AS n, count(DISTINCT request_id) AS ids FROM ollama_performance"
    )
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
    assert {"ollama_prompts", "ollama_performance", "ollama_cache", "dead_letters"} <= tables
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
    # Per host too: a request whose deadline passed in the queue never reached one.
    by_host = {r.host: r.requests for r in stats.windows["1d"] if r.model is None}
    assert sum(by_host.values()) == 12 and by_host[sim.url] >= 10


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
        assert stack.recorder.sink.set_aside == 0  # an outage is waited out, never set aside
    finally:
        await pg.stop()


async def _equals(got: asyncio.Future[object] | object, want: object) -> bool:
    try:
        return await got == want  # type: ignore[misc]
    except (OSError, asyncpg.PostgresError):
        return False


def event(request_id: str, **fields: object) -> bytes:
    """A request event as a router publishes it."""
    defaults: dict[str, object] = {"kind": "generate", "model": MODEL, "at": time.time()}
    return encode(RequestEvent(request_id=request_id, **{**defaults, **fields}))  # type: ignore[arg-type]


async def publish(nc: NATS, prefix: str, *payloads: bytes) -> None:
    """Put `payloads` on the request event subject, stored by the event stream."""
    for payload in payloads:
        await nc.jetstream().publish(Subjects(prefix).event("request"), payload)


async def recorded_ids(url: str) -> list[str]:
    return [
        r["request_id"]
        for r in await query(url, "SELECT request_id FROM ollama_performance ORDER BY request_id")
    ]


async def test_an_event_postgres_refuses_is_set_aside_and_nothing_is_stuck(
    database_url: str, stack_factory: StackFactory, nc: NATS, prefix: str, client: Client
) -> None:
    """An event with a NUL in `model` goes to dead_letters with its reason, the events of
    its batch are recorded, stats show it, and a restarted recorder goes on writing."""
    sections = {"actors": ("recorder",), "database": {"url": database_url},
                "recorder": {"flush_s": 0.2}}  # fmt: skip
    stack = await stack_factory(HOSTS, **sections)
    await stack.stop(grace=1.0)  # the durable consumer stays: what follows is one batch
    poison = event("r2", model="\u0000")
    await publish(nc, prefix, event("r1"), poison, event("r3"))
    stack = await stack_factory(HOSTS, **sections)
    await eventually(lambda: _equals(recorded_ids(database_url), ["r1", "r3"]))
    [letter] = await query(database_url, "SELECT * FROM dead_letters")
    assert (letter["consumer"], letter["subject"]) == (
        "recorder",
        Subjects(prefix).event("request"),
    )
    assert bytes(letter["payload"]) == poison
    assert letter["reason"].startswith("CharacterNotInRepertoireError [22021]"), letter["reason"]
    assert stack.recorder is not None and stack.recorder.sink.set_aside == 1
    assert (
        stack.metrics.registry.get_sample_value(
            "ollamesh_events_set_aside_total", {"consumer": "recorder"}
        )
        == 1
    )
    state = (await client.stats()).recorder
    assert state is not None and state.running and (state.set_aside, state.dead_letters) == (1, 1)
    await stack.stop(grace=1.0)
    stack = await stack_factory(HOSTS, **sections)
    await publish(nc, prefix, event("r4"))
    await eventually(lambda: _equals(recorded_ids(database_url), ["r1", "r3", "r4"]))
    assert len(await query(database_url, "SELECT * FROM dead_letters")) == 1
    assert stack.recorder is not None and stack.recorder.sink.set_aside == 0


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b'{"type": "request", "request_id": "x",', "unreadable: DecodeError"),
        (b'{"type": "request", "request_id": "x"}', "unreadable: ValidationError"),
        (event("x", at=1e18), "unreadable: "),  # OSError or OverflowError, by platform
        (event("x", prompt_tokens=2**40), "DataError"),
    ],
    ids=["bad-json", "not-an-event", "time-out-of-range", "tokens-out-of-range"],
)
async def test_an_event_that_cannot_be_a_row_is_set_aside_not_lost(
    payload: bytes,
    why: str,
    database_url: str,
    stack_factory: StackFactory,
    nc: NATS,
    prefix: str,
) -> None:
    """An event that does not decode, or whose row cannot be written, is kept in
    dead_letters as it came, and the event after it is recorded."""
    await stack_factory(
        HOSTS, actors=("recorder",), database={"url": database_url}, recorder={"flush_s": 0.2}
    )
    await publish(nc, prefix, payload, event("after"))
    await eventually(lambda: _equals(recorded_ids(database_url), ["after"]))
    [letter] = await query(database_url, "SELECT payload, reason FROM dead_letters")
    assert bytes(letter["payload"]) == payload
    assert letter["reason"].startswith(why), letter["reason"]


async def test_a_schema_fault_restarts_the_loop_visibly_and_sets_nothing_aside(
    database_url: str,
    stack_factory: StackFactory,
    nc: NATS,
    prefix: str,
    client: Client,
    nats_server,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With a column gone the write is a fault, not a refused row: the loop crashes and
    restarts (in `loops`, in `llm.v1.stats`, in `ollamesh stats`), events wait, none is
    set aside, and once the column is back they are recorded."""
    stack = await stack_factory(
        HOSTS, actors=("recorder",), database={"url": database_url}, recorder={"flush_s": 0.2}
    )
    assert stack.recorder is not None
    await query(database_url, "ALTER TABLE ollama_performance RENAME COLUMN template TO t")
    await publish(nc, prefix, event("r1"))

    async def restarted() -> bool:
        state = (await client.stats()).recorder
        return state is not None and state.restarts >= 2

    await eventually(restarted)
    args = argparse.Namespace(nats=nats_server.url, prefix=prefix, timeout=10.0, window="1m")
    assert await terminal.stats(args) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("recorder: ") and "UndefinedColumnError" in line, line
    assert (
        stack.recorder.sink.set_aside == 0
        and await query(database_url, "SELECT * FROM dead_letters") == []
    )
    await query(database_url, "ALTER TABLE ollama_performance RENAME COLUMN t TO template")
    await eventually(lambda: _equals(recorded_ids(database_url), ["r1"]), timeout=10)
    assert stack.recorder.loops["sink"].running == 1


async def test_stats_show_the_recorder_writing(
    database_url: str,
    stack_factory: StackFactory,
    nc: NATS,
    prefix: str,
    client: Client,
    nats_server,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`llm.v1.stats` carries the recorder's state and `ollamesh stats` prints it in a line."""
    await stack_factory(
        HOSTS, actors=("recorder",), database={"url": database_url}, recorder={"flush_s": 0.2}
    )
    await publish(nc, prefix, event("r1"), event("r2"))
    await eventually(lambda: _equals(recorded_ids(database_url), ["r1", "r2"]))
    state = (await client.stats()).recorder
    assert state is not None and state.running
    assert (state.written, state.set_aside, state.restarts, state.dead_letters) == (2, 0, 0, 0)
    args = argparse.Namespace(nats=nats_server.url, prefix=prefix, timeout=10.0, window="1m")
    assert await terminal.stats(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "recorder: writing, 2 rows since start"
