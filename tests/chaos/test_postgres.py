"""Postgres stopped for 60 s under load, on a three-node NATS cluster: the routers,
executors and health monitor in one process on one node, the recorder, cache keeper and
prompt store in another on another node, the client on the third. Every request is
served throughout; once Postgres is back, every stats row (and every cached answer)
arrives, each once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.js.api import ConsumerInfo

from actors.simulator import SimulatorServer
from actors.store import EmbeddedPostgres
from bus.client import Client
from bus.errors import OllameshError
from bus.server import EmbeddedNats
from bus.subjects import Subjects
from tests.helpers import eventually, ollamesh_running, query, up_env

MODEL = "llama3.2:3b"
OUTAGE_S = 60.0  # the outage
# Streamed or whole answers, of a plain prompt or of a stored template, a worker each.
WORKERS = 4
# A seeded template (actors/prompts.py): the prompt store renders it for the router.
TEMPLATE = "safety_check_template"
# Every request ends within this, or it counts as lost: "never hangs", not a speed.
BOUND_S = 30.0
# Requests served before the outage (and after it) to show the fleet serving then.
SERVED_AROUND = 40
# The rows' wait after Postgres is back: the writers retry every 10 s at most.
ROWS_WITHIN_S = 30.0
# The recorder and cache keeper consumers of the event stream (actors/recorder.py,
# actors/cache.py): settled when neither has an event left to write.
CONSUMERS = ("recorder", "cache-keeper")


@dataclass
class Outcome:
    """One request: when it was sent and ended, and how ("done" or the error's code)."""

    request_id: str
    streamed: bool
    templated: bool
    sent: float
    ended: float
    code: str


@dataclass
class Load:
    """Workers sending requests with distinct prompts back to back until stopped."""

    client: Client
    outcomes: list[Outcome] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @contextlib.asynccontextmanager
    async def running(self, workers: int) -> AsyncIterator[None]:
        """`workers` sending for the block; at its end, each finishes its request."""
        tasks = [asyncio.create_task(self.run(i)) for i in range(workers)]
        try:
            yield
            self.stopping.set()
            await asyncio.wait_for(asyncio.gather(*tasks), BOUND_S + 5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, worker: int) -> None:
        streamed, templated = worker % 2 == 0, worker % 4 >= 2
        while not self.stopping.is_set():
            request_id = uuid.uuid4().hex
            sent = time.monotonic()
            try:
                await asyncio.wait_for(self._one(request_id, streamed, templated), BOUND_S)
                code = "done"
            except OllameshError as exc:
                code = exc.code
            except TimeoutError:
                code = "lost"
            ended = time.monotonic()
            self.outcomes.append(Outcome(request_id, streamed, templated, sent, ended, code))

    async def _one(self, request_id: str, streamed: bool, templated: bool) -> None:
        question = f"question {request_id}"
        fields: dict[str, object] = {"prompt": question}
        if templated:
            variables = {"conditions": question, "workers": 3, "equipment": "-", "hazards": "-"}
            fields = {"prompt_template": TEMPLATE, "variables": variables}
        # Deterministic (temperature 0), so each answer is also handed to the cache keeper.
        options = {"num_predict": 8, "temperature": 0}
        if streamed:
            stream = await self.client.generate(
                MODEL, stream=True, options=options, request_id=request_id, **fields
            )
            await stream.text()
            assert stream.done is not None
        else:
            result = await self.client.generate(
                MODEL, options=options, request_id=request_id, **fields
            )
            assert result.done

    def ended_after(self, moment: float) -> int:
        return sum(o.ended > moment for o in self.outcomes)


async def _rows(url: str) -> dict[str, int]:
    """Stats rows per request id."""
    records = await query(
        url, "SELECT request_id, count(*)::int AS n FROM ollama_performance GROUP BY 1"
    )
    return {r["request_id"]: r["n"] for r in records}


async def _settled(client: Client, subjects: Subjects) -> bool:
    """Whether the recorder and the cache keeper have written every event there is."""
    js = client.nc.jetstream()
    for name in CONSUMERS:
        info: ConsumerInfo = await js.consumer_info(subjects.event_stream, name)
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def _seconds_until(check: Callable[[], Awaitable[bool]], timeout: float) -> float | None:
    """How long `check` took to hold (see `eventually`); None if it did not in `timeout`
    (the assertions after the figures say what is missing)."""
    began = time.monotonic()
    try:
        await eventually(check, timeout)
    except TimeoutError:
        return None
    return time.monotonic() - began


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s"


@pytest.mark.timeout(300)
async def test_postgres_stopped_for_a_minute_under_load_loses_no_request_and_no_row(
    cluster: list[EmbeddedNats], sim_factory, prefix: str, tmp_path: Path
) -> None:
    """Postgres stopped for 60 s (its server process gone) under a steady load of
    streamed and whole requests, of plain prompts and of a stored template, its actors on
    another node and in another process than the routers: every request ends `done`
    within the bound, none lost, none served twice, no writer crashed; afterwards every
    request has exactly one stats row and one cached answer."""
    sims: list[SimulatorServer] = [
        await sim_factory(models=[MODEL], tokens_per_second=50.0) for _ in range(2)
    ]
    postgres = EmbeddedPostgres(tmp_path / "pg")
    database = await postgres.start()
    config = tmp_path / "ollamesh.toml"
    config.write_text("[nats]\nreplicas = 3\n[metrics]\nport = 0\n")
    settings = {"OLLAMESH_CONFIG": str(config), "XDG_DATA_HOME": str(tmp_path)}
    front_env = up_env(cluster[0].url, *(s.url for s in sims), prefix=prefix, **settings)
    stores_env = up_env(cluster[1].url, prefix=prefix, DATABASE_URL=database, **settings)
    subjects = Subjects(prefix)
    try:
        async with (
            ollamesh_running(front_env, "--actors", "router,executor,health") as front,
            ollamesh_running(stores_env, "--actors", "recorder,cache,prompts") as stores,
            Client(cluster[2].url, prefix=prefix, timeout=BOUND_S) as client,
        ):
            load = Load(client)
            async with load.running(WORKERS):
                await eventually(lambda: len(load.outcomes) >= SERVED_AROUND, 30)
                await eventually(lambda: _any_row(database), 30)  # the recorder writes

                await postgres.stop()
                down = time.monotonic()
                assert not (postgres.data_dir / "postmaster.pid").exists()
                await asyncio.sleep(OUTAGE_S)  # the outage itself, not a wait for anything
                served_while_down = load.ended_after(down)
                assert await postgres.start() == database
                back = time.monotonic()

                before_back = {o.request_id for o in load.outcomes}
                backlog_s = await _seconds_until(
                    lambda: _has_rows(database, before_back), ROWS_WITHIN_S
                )
                await eventually(lambda: load.ended_after(back) >= SERVED_AROUND, 30)
            stopped = time.monotonic()
            ids = {o.request_id for o in load.outcomes}
            all_rows_s = await _seconds_until(lambda: _has_rows(database, ids), ROWS_WITHIN_S)
            await eventually(lambda: _settled(client, subjects), 30)
            last_row_s = time.monotonic() - back
            # The prompt store answers from Postgres again.
            assert (await client.get_prompt("hoai_analysis_template")).version >= 1
            assert await front.stop() == 0 and await stores.stop() == 0
        rows = await _rows(database)
        cached = (await query(database, "SELECT count(*)::int AS n FROM ollama_cache"))[0]["n"]
    finally:
        await postgres.stop()

    outcomes = load.outcomes
    codes = [o.code for o in outcomes]
    generations = sum(s.engine.stats.generations for s in sims)
    worst = max(o.ended - o.sent for o in outcomes)
    ends = sorted(o.ended for o in outcomes)
    gap = max(b - a for a, b in itertools.pairwise(ends))
    missing = ids - rows.keys()
    crashes = sum(stores.events[e] for e in ("loop_crashed", "handler_crashed"))
    twice = sorted(k for k, n in rows.items() if n > 1)
    others = sorted(rows.keys() - ids)
    print(
        f"\npostgres down {OUTAGE_S:.0f} s: {len(outcomes)} requests"
        f" ({sum(o.streamed for o in outcomes)} streamed,"
        f" {sum(o.templated for o in outcomes)} of a template), {served_while_down} ended while"
        f" it was down; lost {codes.count('lost')}, failed"
        f" {len(codes) - codes.count('done') - codes.count('lost')}; generated"
        f" {generations}; rows {sum(rows.values())} for {len(rows)} requests, missing"
        f" {len(missing)}, duplicated {sum(n - 1 for n in rows.values())}; cached answers"
        f" {cached}; worst time to a terminal message {worst:.2f} s, longest gap between"
        f" two endings {gap:.2f} s; the outage's backlog written {_s(backlog_s)} after"
        f" Postgres was back, every row {_s(all_rows_s)} after the load stopped"
        f" ({stopped - back:.1f} s after it was back), the event consumers settled"
        f" {last_row_s:.1f} s after it was back; writes delayed (recorder and cache"
        f" keeper) {stores.events['write_delayed']}, renders from memory"
        f" {stores.events['prompt_rendered_from_memory']}; crashed loops and handlers"
        f" {crashes}"
    )
    assert codes == ["done"] * len(outcomes), {c: codes.count(c) for c in set(codes)}
    assert served_while_down >= WORKERS  # served throughout, not only before and after
    assert generations == len(outcomes)  # none served twice
    # Every request's row, once, and no other.
    assert not (missing or twice or others), (len(missing), twice[:5], others[:5])
    assert cached == len(ids)  # distinct prompts: one durable answer each
    assert crashes == 0  # an outage is waited out, not a fault


async def _any_row(database: str) -> bool:
    return bool(await _rows(database))


async def _has_rows(database: str, ids: set[str]) -> bool:
    return ids <= (await _rows(database)).keys()
