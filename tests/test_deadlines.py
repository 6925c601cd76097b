"""`deadline_ms` holds while the request waits in the queue, and ends it exactly once."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
import pytest

from bus.client import Client
from bus.errors import Timeout
from bus.subjects import Subjects
from schemas import Chunk, Error, decode_stream
from tests.helpers import assert_well_formed, stored_stream

MODEL = "llama3.2:3b"


@pytest.fixture
async def one_slot(sim_factory, stack_factory):
    """One host with one slot, generating slowly: a second request waits in the queue."""
    sim = await sim_factory(models=[MODEL], tokens_per_second=20.0, num_parallel=1)
    await stack_factory([sim.url], executor={"max_inflight_per_model": 1})
    return sim


async def _occupy(client: Client, sim) -> asyncio.Task[str]:
    """Start a 3 s answer on the only slot; return once the host is busy with it."""
    stream = await client.generate(MODEL, "long", stream=True, options={"num_predict": 60})
    task = asyncio.create_task(stream.text())
    await sim.engine.wait_for(lambda s: s.in_flight == 1, timeout=10)
    return task


@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "not-streamed"])
async def test_a_queued_request_times_out_at_its_deadline_and_never_reaches_a_host(
    one_slot, client: Client, prefix: str, streamed: bool
) -> None:
    """Behind a busy slot, `deadline_ms: 300` gets `timeout` while the slot is still busy
    (not when the slot frees, 3 s later), and the host never sees the request."""
    sim = one_slot
    busy = await _occupy(client, sim)
    with pytest.raises(Timeout, match="deadline passed while the request was queued"):
        if streamed:
            stream = await client.generate(MODEL, "late", stream=True, deadline_ms=300)
            await stream.text()
        else:
            await client.generate(MODEL, "late", deadline_ms=300)
    assert sim.engine.stats.in_flight == 1 and not busy.done()
    await busy
    assert sim.engine.stats.generations == 1
    if streamed:
        stored = await stored_stream(client.nc, Subjects(prefix), stream.request_id)
        assert_well_formed(stored)
        assert len(stored) == 1 and isinstance(stored[0], Error)


async def test_a_request_taken_in_time_is_ended_once_at_its_deadline(
    one_slot, client: Client, prefix: str
) -> None:
    """A request that started before its deadline and runs past it is ended by its
    executor (it holds the claim), not a second time by the router's timer."""
    live = await client.nc.subscribe(Subjects(prefix).streams)  # what a raw client sees
    stream = await client.generate(
        MODEL, "long", stream=True, deadline_ms=1500, options={"num_predict": 200}
    )
    with pytest.raises(Timeout):
        await stream.text()
    stored = await stored_stream(client.nc, Subjects(prefix), stream.request_id, timeout=5)
    assert_well_formed(stored)
    assert isinstance(stored[-1], Error) and len(stored) > 1
    ends = 0
    with contextlib.suppress(nats.errors.TimeoutError):
        while True:  # a second ending would come within a second of the first
            message = decode_stream((await live.next_msg(timeout=1.0)).data)
            ends += not isinstance(message, Chunk)
    await live.unsubscribe()
    assert ends == 1
