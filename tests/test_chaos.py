"""Servers and processes killed under load: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from pathlib import Path

from nats.js.errors import NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from actors.runtime.supervisor import Stack
from actors.simulator.engine import Fault
from bus.client import ChunkStream, Client
from bus.errors import OllameshError
from bus.server import EmbeddedNats
from bus.subjects import Subjects
from tests.conftest import make_config
from tests.helpers import (
    assert_well_formed,
    eventually,
    executor_process,
    ollamesh_up,
    query,
    stored_stream,
    up_env,
)

MODEL = "llama3.2:3b"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _read(stream: ChunkStream) -> tuple[str, str]:
    """Read a stream to its end: ("done", text) or (error code, text so far)."""
    parts: list[str] = []
    try:
        async for chunk in stream:
            parts.append(chunk.text)
    except OllameshError as exc:
        return exc.code, "".join(parts)
    return "done", "".join(parts)


async def test_a_nats_server_restart_duplicates_nothing(
    tmp_path: Path, sim_factory, database_url: str, prefix: str
) -> None:
    """20 streamed requests (8 running, 12 queued) across a 3 s nats-server restart: each
    ends with exactly one terminal message, every seq stored once, one stats row each;
    the memory-backed buckets (registry, health, rate limits) work again afterwards."""
    server = EmbeddedNats(port=_free_port(), data_dir=tmp_path / "js")
    url = await server.start()
    sims = [await sim_factory(models=[MODEL], tokens_per_second=40.0) for _ in range(2)]
    config = make_config(
        url,
        prefix,
        [s.url for s in sims],
        # An ack wait shorter than the outage: after the restart the server delivers
        # every running request again, and the executors must leave them to their owner.
        executor={"max_inflight_per_model": 4, "ack_wait_s": 1.0, "tags_refresh_s": 1.0},
        routing={"limits": {MODEL: {"rpm": 100_000}}},
        health={"interval_s": 1.0},
        database={"url": database_url},
    )
    stack = Stack(config, actors=("router", "executor", "recorder", "health"))
    await stack.start()
    subjects = Subjects(prefix)
    try:
        async with Client(url, prefix=prefix, timeout=30.0) as client:
            streams = [
                await client.generate(
                    MODEL, f"story {i}", stream=True, options={"num_predict": 120}
                )
                for i in range(20)
            ]
            readers = [asyncio.create_task(_read(s)) for s in streams]
            await eventually(lambda: sum(s.engine.stats.in_flight for s in sims) >= 8, 10)
            await server.stop()
            await asyncio.sleep(3.0)  # the outage itself, not a wait for anything
            await server.start()
            outcomes = await asyncio.wait_for(asyncio.gather(*readers), 90)
            assert [code for code, _ in outcomes] == ["done"] * 20, outcomes
            for stream in streams:
                assert_well_formed(await stored_stream(client.nc, subjects, stream.request_id))
            assert stack.recorder is not None
            await eventually(lambda: stack.recorder.written >= 20, 30)  # type: ignore[union-attr]
            js = client.nc.jetstream()
            for bucket in (subjects.host_bucket, subjects.health_bucket):
                kv = await js.key_value(bucket)
                await eventually(lambda kv=kv: _has_keys(kv), 10)
            after = await client.generate(MODEL, "after", options={"num_predict": 3})
            assert after.done
            limits = await js.key_value(subjects.limit_bucket)
            assert await _has_keys(limits)
        rows = await _stats_rows(database_url)
        assert sorted(rows.values()) == [1] * 21, rows
    finally:
        await stack.stop(grace=2.0)
        await server.stop()


async def _has_keys(kv: KeyValue) -> bool:
    try:
        return bool(await kv.keys())
    except NoKeysError:
        return False


async def _stats_rows(database_url: str) -> dict[str, int]:
    """Rows per request id in `ollama_performance`."""
    rows = await query(
        database_url, "SELECT request_id, count(*) AS n FROM ollama_performance GROUP BY 1"
    )
    return {r["request_id"]: r["n"] for r in rows}


async def test_a_killed_executor_s_requests_end_or_move_within_seconds(
    sim_factory, stack_factory, nats_server, prefix: str, tmp_path: Path
) -> None:
    """SIGKILL on an executor process: its started stream goes on on another host from
    its last chunk, and its unstarted request moves there, within the work queue's ack
    wait (4 s) plus the board's staleness, not 29 s later."""
    doomed = await sim_factory(models=[MODEL], tokens_per_second=20.0, num_parallel=2)
    doomed.engine.set_fault(Fault(kind="slow_first_token", delay_ms=60_000, count=1))
    steady = await sim_factory(models=[MODEL])
    proc = await executor_process(nats_server.url, doomed.url, prefix, tmp_path, 2)
    try:
        await stack_factory([doomed.url], actors=("router",))
        async with Client(nats_server.url, prefix=prefix, timeout=30.0) as client:
            streams = [
                await client.generate(MODEL, f"q{i}", stream=True, options={"num_predict": 400})
                for i in range(2)
            ]
            readers = [asyncio.create_task(_read(s)) for s in streams]
            await doomed.engine.wait_for(lambda s: s.in_flight == 2, timeout=10)
            subjects = Subjects(prefix)

            async def one_started() -> bool:
                js = client.nc.jetstream()
                for stream in streams:
                    with contextlib.suppress(NotFoundError):
                        await js.get_last_msg(
                            subjects.chunk_stream, subjects.stream(stream.request_id)
                        )
                        return True
                return False

            await eventually(one_started, 10)
            await stack_factory([steady.url], actors=("executor",))
            proc.kill()
            killed = time.monotonic()
            outcomes = await asyncio.wait_for(asyncio.gather(*readers), 30)
            took = time.monotonic() - killed
            print(f"requests of the killed executor ended {took:.2f} s after SIGKILL")
            assert [code for code, _ in outcomes] == ["done", "done"], outcomes
            assert sorted(bool(s.done and s.done.moved) for s in streams) == [False, True]
            for stream in streams:
                assert_well_formed(await stored_stream(client.nc, subjects, stream.request_id))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_sigterm_while_nats_is_down_ends_within_the_grace(
    tmp_path: Path, sim_factory
) -> None:
    """`ollamesh up` told to stop while its NATS server is gone (the connection retrying)
    ends within its grace plus the bounded slack, with code 0, not half a minute later."""
    server = EmbeddedNats(port=_free_port(), data_dir=tmp_path / "js")
    url = await server.start()
    sim = await sim_factory(models=[MODEL], tokens_per_second=20.0)
    config = tmp_path / "up.toml"
    config.write_text("[executor]\nshutdown_grace_s = 2.0\n[metrics]\nport = 0\n")
    env = up_env(url, sim.url, OLLAMESH_CONFIG=str(config))
    proc = await ollamesh_up(env, "--actors", "router,executor")
    try:
        async with Client(url, timeout=30.0) as client:
            stream = await client.generate(MODEL, "long", stream=True, options={"num_predict": 400})
            await sim.engine.wait_for(lambda s: s.in_flight == 1, timeout=10)
            await stream.aclose()
        await server.stop()
        proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        code = await asyncio.wait_for(proc.wait(), 30)
        print(f"stopped {time.monotonic() - stopped:.2f} s after SIGTERM")
        assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.stop()
