"""Graceful shutdown under load: SIGTERM on an executor process loses no request and
serves none twice."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

from bus.client import Client
from bus.subjects import Subjects
from schemas import Done
from tests.helpers import assert_well_formed, ollamesh_up, stored_stream, up_env

MODEL = "llama3.2:3b"
MODELS = [MODEL]
REQUESTS = 40


async def test_sigterm_on_a_busy_executor_loses_nothing_and_serves_nothing_twice(
    sim_factory, stack_factory, client: Client, nats_server, nc, prefix: str, tmp_path
) -> None:
    """Forty streams on two hosts; the executor process of one gets SIGTERM mid-load.
    Its running streams finish within the grace, its unstarted work moves to the other
    host: every request ends with exactly one `done`, and the hosts together generated
    exactly forty answers."""
    doomed = await sim_factory(models=MODELS, tokens_per_second=40, num_parallel=2)
    steady = await sim_factory(models=MODELS, tokens_per_second=200)
    config = tmp_path / "executor.toml"
    config.write_text(
        "[executor]\nmax_inflight_per_model = 2\nshutdown_grace_s = 10.0\n[metrics]\nport = 0\n"
    )
    env = up_env(nats_server.url, doomed.url, prefix=prefix, OLLAMESH_CONFIG=str(config))
    proc = await ollamesh_up(env, "--actors", "executor")
    try:
        await stack_factory([steady.url], routing={"host_strategy": "round-robin"})

        async def one(i: int) -> Done:
            stream = await client.generate(MODEL, f"q{i}", stream=True, options={"num_predict": 20})
            await stream.text()
            assert stream.done is not None
            return stream.done

        requests = [asyncio.ensure_future(one(i)) for i in range(REQUESTS)]
        await doomed.engine.wait_for(lambda s: s.in_flight == 2, timeout=10)
        proc.send_signal(signal.SIGTERM)
        done = await asyncio.gather(*requests)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    hosts = Counter(d.host for d in done)
    assert hosts[doomed.url] >= 2 and sum(hosts.values()) == REQUESTS, hosts
    generated = doomed.engine.stats.generations + steady.engine.stats.generations
    assert generated == REQUESTS
    subjects = Subjects(prefix)
    for d in done:
        assert_well_formed(await stored_stream(nc, subjects, d.request_id))
