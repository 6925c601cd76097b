"""The reasoning coordinator: chains planned, solved as a graph, synthesised, stored."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import msgspec
import pytest

from actors.reasoning.store import ChainStore
from actors.simulator import Fault, Script
from actors.simulator.text import count_tokens
from bus.client import ChainStream, Client
from bus.errors import Cancelled, ModelNotFound, Timeout, UpstreamError
from bus.subjects import Subjects
from schemas import Chunk, Done, Error, ReasonResult, decode_reply, encode
from schemas.internal import ChainWork
from schemas.reasoning import ChainState, ReasonRequest, Step, StepState
from tests.helpers import (
    assert_well_formed,
    eventually,
    ollamesh_up,
    refuse_connections,
    stored_stream,
    up_env,
)

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


def _diamond() -> str:
    return json.dumps({"steps": [
        {"id": "A", "text": "count the floors", "depends_on": [], "kind": "general"},
        {"id": "B", "text": "windows on the front", "depends_on": ["A"], "kind": "general"},
        {"id": "C", "text": "windows on the back", "depends_on": ["A"], "kind": "general"},
        {"id": "D", "text": "add them up", "depends_on": ["B", "C"], "kind": "mathematical"},
    ]})  # fmt: skip


@pytest.fixture
async def slow_fleet(database_url: str, sim_factory, stack_factory):
    """As `fleet`, the host answering 40 tokens a second, and the plan scripted: a diamond."""
    sim = await sim_factory(models=MODELS, tokens_per_second=40.0)
    sim.engine.scripts.add(Script(match=DECOMPOSE, text=_diamond(), count=1))
    await stack_factory([sim.url], actors=REASONING, database={"url": database_url})
    return sim


DECOMPOSE = "Break the problem below"
TWENTY = {"num_predict": 20}


async def test_independent_steps_run_at_the_same_time(slow_fleet, client: Client) -> None:
    """A; B and C after A; D after B and C: B and C overlap, A ends before they start,
    D starts after both end (from the steps' stored times)."""
    result = await client.reason(SEED_QUERY, stream=False, options=TWENTY)
    assert isinstance(result, ReasonResult)
    at = {s.step_id: (s.started_at, s.finished_at) for s in result.steps}
    assert [s.step_id for s in result.steps] == ["A", "B", "C", "D"]
    (_, a1), (b0, b1), (c0, c1), (d0, _) = (at[i] for i in "ABCD")
    assert a1 <= min(b0, c0)  # type: ignore[operator]
    assert max(b0, c0) < min(b1, c1)  # type: ignore[operator]  # both under way at once
    assert max(b1, c1) <= d0  # type: ignore[operator]


async def test_a_step_receives_the_answers_it_depends_on(slow_fleet, client: Client) -> None:
    """B's prompt holds A's answer (the simulator saw it), D's holds B's and C's."""
    result = await client.reason(SEED_QUERY, stream=False, options=TWENTY)
    assert isinstance(result, ReasonResult)
    answers = {s.step_id: s.answer for s in result.steps}
    prompts = list(slow_fleet.engine.stats.prompts)
    assert any(answers["A"] in p and "windows on the front" in p for p in prompts)
    assert any(answers["B"] in p and answers["C"] in p and "add them up" in p for p in prompts)


async def _until_a_step_starts(stream: ChainStream) -> list[Step | Chunk]:
    seen: list[Step | Chunk] = []
    async for event in stream:
        seen.append(event)
        if isinstance(event, Step) and event.state is StepState.STARTED:
            return seen
    return seen


async def test_cancel_mid_chain_stops_every_generation(
    slow_fleet, client: Client, database_url: str
) -> None:
    """A cancel of the chain's id while its steps generate: the stream ends `cancelled`,
    no generation goes on at the host, and the chain is stored as cancelled."""
    stream = await client.reason(SEED_QUERY, options={"num_predict": 4000})
    assert isinstance(stream, ChainStream)
    await asyncio.wait_for(_until_a_step_starts(stream), 30)
    await slow_fleet.engine.wait_for(lambda s: s.in_flight >= 1, timeout=10)
    await client.cancel(stream.request_id)
    with pytest.raises(Cancelled):
        await asyncio.wait_for(_events(stream), 30)
    await slow_fleet.engine.wait_for(lambda s: s.in_flight == 0, timeout=10)
    chain = await client.get_chain(stream.request_id)
    assert chain.state is ChainState.CANCELLED


async def test_a_failing_step_ends_the_chain_with_an_error_naming_it(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """A step whose model fails mid-answer (no retry can help): one typed error naming the
    step; the steps done before are stored done."""
    sim = await sim_factory(models=MODELS)
    sim.engine.scripts.add(Script(match=DECOMPOSE, text=_diamond(), count=1))
    await stack_factory([sim.url], actors=REASONING, database={"url": database_url})
    # The first step (A) goes through; the next call of the solving model fails.
    sim.engine.set_fault(Fault(kind="error_after", tokens=1, models=["qwen2.5:7b"]))
    sim.engine.scripts.add(Script(match="count the floors", text="five floors", count=1))
    stream = await client.reason(SEED_QUERY)
    assert isinstance(stream, ChainStream)
    with pytest.raises(UpstreamError, match=r"step [ABC] .* failed"):
        await asyncio.wait_for(_events(stream), 30)
    chain = await client.get_chain(stream.request_id)
    assert chain.state is ChainState.FAILED and chain.error and "step" in chain.error


async def test_the_deadline_stops_the_chain_and_its_generations(slow_fleet, client: Client) -> None:
    """`deadline_ms` covers the whole chain: `timeout` then, nothing left generating."""
    stream = await client.reason(SEED_QUERY, deadline_ms=1500, options={"num_predict": 4000})
    assert isinstance(stream, ChainStream)
    with pytest.raises(Timeout):
        await asyncio.wait_for(_events(stream), 30)
    await slow_fleet.engine.wait_for(lambda s: s.in_flight == 0, timeout=10)
    chain = await client.get_chain(stream.request_id)
    assert chain.state is ChainState.FAILED and chain.error and "deadline" in chain.error


async def test_a_chain_stored_as_ended_gets_its_stream_s_end_when_delivered_again(
    fleet, client: Client, prefix: str, database_url: str
) -> None:
    """A coordinator that stored a chain's end and died before sending it: the chain is
    delivered again, and the coordinator that takes it sends the stored end, once."""
    chain_id = "ended-but-not-sent"
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        store = ChainStore(pool)
        assert await store.create(chain_id, SEED_QUERY, "en")
        done = Done(request_id=chain_id, chain_id=chain_id, answer="twenty", model="m")
        await store.finish(chain_id, ChainState.DONE, "twenty", None, encode(done))
    finally:
        await pool.close()
    work = ChainWork(
        chain_id=chain_id, body=msgspec.Raw(encode(ReasonRequest(query=SEED_QUERY))),
        reply=None, accepted_at=0.0,
    )  # fmt: skip
    subjects = Subjects(prefix)
    await client.nc.jetstream().publish(subjects.chain_work, encode(work))
    stored = await stored_stream(client.nc, subjects, chain_id, timeout=15)
    assert len(stored) == 1 and isinstance(stored[0], Done) and stored[0].answer == "twenty"


async def test_a_database_outage_mid_chain_delays_it_and_it_finishes_after(
    slow_fleet, client: Client, postgres, prefix: str
) -> None:
    """Postgres refuses the chain's database while its first step generates: the chain is
    neither lost nor ended; it stays queued (delivered again), and once the database is
    back it finishes, stored as done, every call generated once."""
    stream = await client.reason(SEED_QUERY, options=TWENTY)
    assert isinstance(stream, ChainStream)
    await asyncio.wait_for(_until_running(stream, {"A"}), 30)
    await refuse_connections(postgres.url(), prefix, True)
    try:
        subjects = Subjects(prefix)

        async def delivered_again() -> bool:
            info = await client.nc.jetstream().consumer_info(
                subjects.work_stream, "reasoning-chains"
            )
            return info.num_redelivered >= 1

        await eventually(delivered_again, 30)
    finally:
        await refuse_connections(postgres.url(), prefix, False)
    await asyncio.wait_for(_events(stream), 60)
    done = stream.done
    assert done is not None and done.answer and done.steps is not None
    assert [s.state for s in done.steps] == [StepState.DONE] * 4
    assert slow_fleet.engine.stats.generations == 6, slow_fleet.engine.stats.prompts
    chain = await client.get_chain(stream.request_id)
    assert chain.state is ChainState.DONE and chain.answer == done.answer


async def _until_running(stream: ChainStream, steps: set[str]) -> None:
    """Read the chain's stream until every one of `steps` has started."""
    started: set[str] = set()
    async for event in stream:
        if isinstance(event, Step) and event.state is StepState.STARTED:
            started.add(event.step_id)
            if steps <= started:
                return
    raise AssertionError(f"the chain ended with only {started} started")


async def test_a_coordinator_killed_mid_chain_is_replaced_and_nothing_is_generated_twice(
    database_url: str, sim_factory, stack_factory, nats_server, prefix: str, tmp_path: Path
) -> None:
    """SIGKILL on the coordinator's process while B and C generate (A done, D not begun):
    another coordinator finishes the chain, following B and C rather than asking again, so
    the host generates the plan, each of the four steps and the synthesis once: 6 in all."""
    sim = await sim_factory(models=MODELS, tokens_per_second=40.0)
    sim.engine.scripts.add(Script(match=DECOMPOSE, text=_diamond(), count=1))
    await stack_factory([sim.url], actors=("router", "executor", "prompts"))
    config = tmp_path / "reasoning.toml"
    config.write_text("[metrics]\nport = 0\n")
    env = up_env(
        nats_server.url, prefix=prefix, DATABASE_URL=database_url, OLLAMESH_CONFIG=str(config)
    )
    proc = await ollamesh_up(env, "--actors", "reasoning")
    try:
        async with Client(nats_server.url, prefix=prefix, timeout=60.0) as client:
            stream = await client.reason(SEED_QUERY, options={"num_predict": 80})
            assert isinstance(stream, ChainStream)
            await asyncio.wait_for(_until_running(stream, {"B", "C"}), 30)
            await sim.engine.wait_for(lambda s: s.in_flight == 2, timeout=10)
            proc.kill()
            await proc.wait()
            await stack_factory([sim.url], actors=("reasoning",), database={"url": database_url})
            rest = await asyncio.wait_for(_events(stream), 60)
            done = stream.done
            assert done is not None and done.answer and done.steps is not None
            assert [s.step_id for s in done.steps if s.state is StepState.DONE] == list("ABCD")
            assert sim.engine.stats.generations == 6, sim.engine.stats.prompts
            assert "".join(e.text for e in rest if isinstance(e, Chunk)) == done.answer
            assert_well_formed(await stored_stream(client.nc, Subjects(prefix), stream.request_id))
            chain = await client.get_chain(stream.request_id)
            assert chain.state is ChainState.DONE and chain.answer == done.answer
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


MATH_MODEL = "phi3:14b"


async def test_mathematical_steps_go_to_the_mathematical_role(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """The diamond's D is `mathematical`: the role's model answers it, the others not."""
    sim = await sim_factory(models=[*MODELS, MATH_MODEL])
    sim.engine.scripts.add(Script(match=DECOMPOSE, text=_diamond(), count=1))
    await stack_factory(
        [sim.url], actors=REASONING, database={"url": database_url},
        roles={"mathematical": MATH_MODEL},
    )  # fmt: skip
    result = await client.reason(SEED_QUERY, stream=False, options=TWENTY)
    assert isinstance(result, ReasonResult)
    models = {s.step_id: s.model for s in result.steps}
    assert models == {"A": "qwen2.5:7b", "B": "qwen2.5:7b", "C": "qwen2.5:7b", "D": MATH_MODEL}


async def test_a_request_s_roles_choose_the_models_of_its_parts(fleet, client: Client) -> None:
    """`roles` in the request: its steps and synthesis go to the model it names for them
    (the configured `solve` and `synthesise` are qwen2.5:7b), its plan to the one it names
    for `decompose` (one no host has: the chain says so)."""
    plan = json.dumps({"steps": [
        {"id": "A", "text": "count the floors", "depends_on": [], "kind": "general"},
        {"id": "B", "text": "count the windows", "depends_on": ["A"], "kind": "general"},
    ]})  # fmt: skip
    fleet.engine.scripts.add(Script(match=DECOMPOSE, text=plan, count=1))
    small = {"solve": "llama3.2:3b", "synthesise": "llama3.2:3b"}
    result = await client.reason(SEED_QUERY, stream=False, options=TWENTY, roles=small)
    assert isinstance(result, ReasonResult)
    assert [s.model for s in result.steps] == ["llama3.2:3b"] * 2
    assert result.model == "llama3.2:3b"
    with pytest.raises(ModelNotFound, match="absent:1b"):
        await client.reason(SEED_QUERY, stream=False, roles={"decompose": "absent:1b"})


async def test_language_de_asks_the_models_in_german(fleet, client: Client) -> None:
    """`language: "de"`: the plan, every step and the synthesis use the German templates."""
    fleet.engine.scripts.add(Script(match="Zerlege das folgende Problem", text=_diamond()))
    result = await client.reason(SEED_QUERY, stream=False, language="de", options=TWENTY)
    assert isinstance(result, ReasonResult) and len(result.steps) == 4
    prompts = list(fleet.engine.stats.prompts)
    assert len(prompts) == 6 and prompts[0].startswith("Zerlege das folgende Problem")
    assert all(p.startswith("Du bearbeitest einen Schritt") for p in prompts[1:5])
    assert "Schritt A: count the floors\nErgebnis: " in prompts[2]
    assert prompts[5].startswith("Beantworte die Frage aus den Ergebnissen")


async def test_an_operator_s_version_of_a_template_is_the_one_used(fleet, client: Client) -> None:
    """The templates live in the prompt store: a version an operator puts is what the
    chain's steps are asked with (the coordinator never writes over it)."""

    async def stored() -> bool:
        return "reasoning_step" in {p.name for p in await client.list_prompts()}

    await eventually(stored, 10)
    mine = await client.put_prompt("reasoning_step", "OPERATOR'S STEP: {{step}} ({{query}})")
    assert mine.version == 2
    result = await client.reason(SEED_QUERY, stream=False, max_steps=3, options=TWENTY)
    assert isinstance(result, ReasonResult)
    asked = [p for p in fleet.engine.stats.prompts if p.startswith("OPERATOR'S STEP: ")]
    assert len(asked) == len(result.steps) >= 1


async def test_long_step_answers_are_trimmed_to_fit_the_context(fleet, client: Client) -> None:
    """Steps answering ~2000 tokens each with num_ctx 2048: D's prompt and the synthesis's
    stay within the context, with room for the answer asked for, and hold a part of
    every answer they build on (the original sent the whole chain, however long)."""
    fleet.engine.scripts.add(Script(match=DECOMPOSE, text=_diamond(), count=1))
    for i, step in enumerate(("count the floors", "windows on the front", "windows on the back")):
        fleet.engine.scripts.add(
            Script(match=step, text=f"answer{i} " + "many words " * 800, count=1)
        )
    num_ctx, num_predict = 2048, 100
    options = {"num_ctx": num_ctx, "num_predict": num_predict}
    result = await client.reason(SEED_QUERY, stream=False, options=options)
    assert isinstance(result, ReasonResult)
    prompts = list(fleet.engine.stats.prompts)
    built_on = [p for p in prompts if "add them up" in p or "Answer the question" in p]
    assert len(built_on) == 2
    for prompt in built_on:
        assert count_tokens(prompt) + num_predict <= num_ctx, count_tokens(prompt)
        assert "answer1 many" in prompt and "answer2 many" in prompt and "[...]" in prompt
