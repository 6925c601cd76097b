"""The reasoning coordinator: chains planned, solved as a graph, synthesised, stored."""

from __future__ import annotations

import asyncio

import pytest

from bus.client import ChainStream, Client
from bus.subjects import Subjects
from schemas import Chunk, Error, ReasonResult, decode_reply
from schemas.reasoning import ChainState, Step, StepState
from tests.helpers import assert_well_formed, stored_stream

MODELS = ["llama3.2:3b", "qwen2.5:7b"]
REASONING = ("router", "executor", "prompts", "reasoning")
SEED_QUERY = "How many windows are in a 5-story building with 4 windows per floor?"


@pytest.fixture
async def fleet(database_url: str, sim_factory, stack_factory):
    """A router, an executor, the prompt store and a coordinator, one simulated host."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=REASONING, database={"url": database_url})
    return sim


async def _events(stream: ChainStream) -> list[Step | Chunk]:
    return [event async for event in stream]


async def test_the_seed_case_gives_a_chain_of_steps_and_an_answer(
    fleet, client: Client, prefix: str
) -> None:
    """The original service's own example: more than two steps, a chain id, an answer,
    every step started then done, and the whole stream well-formed and stored."""
    stream = await client.reason(SEED_QUERY)
    assert isinstance(stream, ChainStream)
    events = await asyncio.wait_for(_events(stream), 60)
    done = stream.done
    assert done is not None and done.chain_id == stream.request_id and done.answer
    assert done.steps is not None and len(done.steps) > 2
    assert all(s.state is StepState.DONE and s.answer for s in done.steps)
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.state for s in steps].count(StepState.DONE) == len(done.steps)
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == done.answer
    stored = await stored_stream(client.nc, Subjects(prefix), stream.request_id)
    assert_well_formed(stored)
    chain = await client.get_chain(stream.request_id)
    assert chain.state is ChainState.DONE and chain.answer == done.answer
    assert [c.chain_id for c in await client.list_chains()] == [stream.request_id]


async def test_a_chain_not_streamed_answers_with_its_result(fleet, client: Client) -> None:
    """`stream: false` gives the whole result in the reply."""
    result = await client.reason(SEED_QUERY, stream=False, max_steps=3)
    assert isinstance(result, ReasonResult) and result.answer and result.steps


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(b"{", "invalid reason request", id="malformed"),
        pytest.param(b'{"query": "   "}', "query is empty", id="empty-query"),
        pytest.param(b'{"query": "x", "max_steps": 0}', "max_steps", id="no-steps"),
        pytest.param(b'{"query": "x", "max_steps": 33}', "max_steps", id="too-many-steps"),
        pytest.param(b'{"query": "x", "language": "fr"}', "language", id="language"),
    ],
)
async def test_a_bad_reason_request_is_a_bad_request_at_once(
    fleet, client: Client, prefix: str, body: bytes, says: str
) -> None:
    """A bad body, an empty query or max_steps out of range: `bad_request`, nothing queued."""
    reply = decode_reply((await client.nc.request(f"{prefix}.v1.reason", body, timeout=5)).data)
    assert isinstance(reply, Error) and reply.code == "bad_request" and says in reply.message
    assert await client.list_chains() == []
