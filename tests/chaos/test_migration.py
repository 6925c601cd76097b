"""Mid-stream migration: a host, or an executor process, dying after the first token
leaves the answer going on elsewhere from the last token sent, one stream, once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from actors.simulator import Fault
from bus.client import ChunkStream, Client
from bus.subjects import Subjects
from schemas import Done
from tests.helpers import assert_well_formed, eventually, executor_process, stored_stream

MODEL = "llama3.2:3b"
TOKENS = 60
STREAMS = 50
DETERMINISTIC = {"temperature": 0, "num_predict": TOKENS}


async def _ask(client: Client, kind: str, **fields) -> ChunkStream:
    """The same question, as a chat or as a generate, never from the cache."""
    if kind == "chat":
        messages = [{"role": "user", "content": "Why is the sky blue?"}]
        return await client.chat(MODEL, messages, stream=True, cache="off", **fields)
    return await client.generate(
        MODEL, "Why is the sky blue?", system="Be brief.", stream=True, cache="off", **fields
    )


class Reading:
    """A stream read to its end: its chunks' seqs and text, and its longest silence."""

    def __init__(self, stream: ChunkStream) -> None:
        self.stream = stream
        self.seqs: list[int] = []
        self.text: list[str] = []
        self.silence = 0.0

    async def read(self, first_chunk: asyncio.Event | None = None) -> Reading:
        last = time.monotonic()
        async for chunk in self.stream:
            now = time.monotonic()
            self.silence, last = max(self.silence, now - last), now
            self.seqs.append(chunk.seq)
            self.text.append(chunk.text)
            if first_chunk is not None:
                first_chunk.set()
        self.silence = max(self.silence, time.monotonic() - last)
        return self

    @property
    def done(self) -> Done:
        assert self.stream.done is not None
        return self.stream.done


@pytest.mark.parametrize("kind", ["chat", "generate"])
async def test_an_answer_moved_mid_stream_equals_the_uninterrupted_one(
    sim_factory, stack_factory, client: Client, kind: str
) -> None:
    """At temperature 0 the text a host began and another finished is the text one host
    gives uninterrupted; seq goes on without a gap or a repeat, `done` says it moved and
    counts every token."""
    first = await sim_factory(models=[MODEL], tokens_per_second=100)
    await stack_factory([first.url])
    started = asyncio.Event()
    moved = Reading(await _ask(client, kind, options=DETERMINISTIC))
    reading = asyncio.create_task(moved.read(started))
    await asyncio.wait_for(started.wait(), 10)
    second = await sim_factory(models=[MODEL])
    await stack_factory([second.url], actors=("executor",))
    await first.kill()
    await asyncio.wait_for(reading, 30)

    assert moved.done.moved and moved.done.host == second.url
    assert moved.seqs == list(range(1, len(moved.seqs) + 1)) and len(moved.seqs) >= 2
    assert moved.done.seq == len(moved.seqs) + 1
    assert moved.done.eval_count == TOKENS
    whole = await Reading(await _ask(client, kind, options=DETERMINISTIC)).read()
    assert not whole.done.moved and whole.done.host == second.url
    assert "".join(moved.text) == "".join(whole.text)
    # The second host was asked to go on from the text so far, not to start again.
    assert second.engine.stats.generations == 2


async def test_a_host_failing_mid_stream_twice_still_ends_in_one_whole_answer(
    sim_factory, stack_factory, client: Client
) -> None:
    """A host that drops the connection after 7 tokens, twice: the answer goes on from
    where each attempt broke off, and is the uninterrupted one."""
    sim = await sim_factory(models=[MODEL])
    await stack_factory([sim.url])
    sim.engine.set_fault(Fault(kind="die_after", tokens=7, count=2))
    moved = await Reading(await _ask(client, "chat", options=DETERMINISTIC)).read()
    whole = await Reading(await _ask(client, "chat", options=DETERMINISTIC)).read()
    assert moved.done.moved and not whole.done.moved
    assert "".join(moved.text) == "".join(whole.text)
    assert moved.done.eval_count == whole.done.eval_count == TOKENS
    assert sim.engine.stats.generations == 4  # three for the moved answer, one whole


async def test_an_executor_sigkilled_in_the_middle_of_50_streams(
    sim_factory, stack_factory, nats_server, prefix: str, tmp_path: Path
) -> None:
    """SIGKILL on the executor process serving 50 streams: every one goes on on the other
    executor and ends in `done`, none served twice (each stored stream numbered 1, 2, 3
    ... with one ending), none silent longer than the work queue's ack wait and a board
    heartbeat allow."""
    doomed = await sim_factory(models=[MODEL], tokens_per_second=10.0, num_parallel=STREAMS)
    steady = await sim_factory(models=[MODEL], num_parallel=STREAMS)
    proc = await executor_process(nats_server.url, doomed.url, prefix, tmp_path, STREAMS)
    try:
        await stack_factory([doomed.url], actors=("router",))
        async with Client(nats_server.url, prefix=prefix, timeout=60.0) as client:
            streams = [
                await client.generate(
                    MODEL, f"question {i}", stream=True, options={"num_predict": TOKENS}
                )
                for i in range(STREAMS)
            ]
            readings = [Reading(s) for s in streams]
            tasks = [asyncio.create_task(r.read()) for r in readings]
            await eventually(lambda: all(r.seqs for r in readings), timeout=20)
            await stack_factory(
                [steady.url], actors=("executor",), executor={"max_inflight_per_model": STREAMS}
            )
            proc.kill()
            killed = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            took = time.monotonic() - killed
            subjects = Subjects(prefix)
            stored = [await stored_stream(client.nc, subjects, s.request_id) for s in streams]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    worst = max(r.silence for r in readings)
    print(
        f"{STREAMS} streams, executor SIGKILLed mid-answer: all ended {took:.2f} s after,"
        f" longest silence {worst:.2f} s"
    )
    for reading, messages in zip(readings, stored, strict=True):
        assert_well_formed(messages)
        assert reading.done.moved and reading.done.host == steady.url
        assert reading.done.eval_count == TOKENS
        assert reading.seqs == list(range(1, len(reading.seqs) + 1))
    # Each went on once on the steady host; none started there again from the start.
    assert steady.engine.stats.generations == STREAMS
    assert worst < 15.0  # a bound on hanging (ack wait 4 s), not a speed target
