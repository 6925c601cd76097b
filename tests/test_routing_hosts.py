"""Host choice, priorities and queue bounds on a simulated fleet, read from `done` messages."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from actors.runtime.supervisor import Stack
from actors.simulator import Fault, SimulatorServer
from bus.client import Client
from bus.errors import Overloaded, RateLimited
from schemas import Done
from tests.helpers import eventually, warm

MODEL = "llama3.2:3b"
MODELS = [MODEL, "qwen2.5:7b"]


async def answer(client: Client, prompt: str, tokens: int = 2, **fields: object) -> Done:
    """Stream one answer to its end; return its `done`."""
    async with await client.generate(
        MODEL, prompt, stream=True, options={"num_predict": tokens}, **fields
    ) as stream:
        await stream.text()
    assert stream.done is not None
    return stream.done


async def warm_hosts(sim_factory, *speeds: float) -> list[SimulatorServer]:
    """Simulated hosts answering at `speeds` tokens/s (0: full speed), the model loaded."""
    sims = [await sim_factory(models=MODELS, tokens_per_second=tps) for tps in speeds]
    for sim in sims:
        await warm(sim.url, MODEL)
    return sims


async def settled(stack: Stack, url: str) -> None:
    """Wait until the executor of `url` has no pull left from before it saw its peers."""
    executor = next(e for e in stack.executors if e.host_url == url)
    puller = executor._pullers[MODEL]

    async def check() -> bool:
        return len(stack.board.loads(MODEL)) == len(stack.executors) and not any(
            puller._pulling.values()
        )

    await eventually(check)


async def test_warm_hosts_take_work_before_cold_ones(
    sim_factory, stack_factory, client: Client
) -> None:
    """One request at a time all go to the host with the model loaded; the cold host
    takes work once the warm one is saturated."""
    hot = await sim_factory(models=MODELS, tokens_per_second=50)
    cold = await sim_factory(models=MODELS, tokens_per_second=50)
    await warm(hot.url, MODEL)
    stack = await stack_factory(
        [cold.url, hot.url], executor={"host_slots": {hot.url: 2}}, routing={"cold_after_ms": 60000}
    )
    await settled(stack, cold.url)
    for i in range(6):
        assert (await answer(client, f"one {i}")).host == hot.url
    done = await asyncio.gather(*(answer(client, f"many {i}", tokens=10) for i in range(6)))
    hosts = Counter(d.host for d in done)
    assert hosts[cold.url] > 0 and hosts[hot.url] > 0, hosts
    assert cold.engine.stats.requests["/api/generate"] == hosts[cold.url]


async def test_a_cold_host_takes_work_that_waited_past_cold_after(
    sim_factory, stack_factory, client: Client
) -> None:
    """With the warm host busy past `cold_after_ms`, waiting work goes to the cold host."""
    hot = await sim_factory(models=MODELS, tokens_per_second=20)
    cold = await sim_factory(models=MODELS)
    await warm(hot.url, MODEL)
    stack = await stack_factory(
        [cold.url, hot.url],
        executor={"host_slots": {hot.url: 1, cold.url: 1}},
        routing={"cold_after_ms": 200},
    )
    await settled(stack, cold.url)
    # The warm host is busy for a second; the second request waits, then goes cold.
    slow = asyncio.ensure_future(answer(client, "long", tokens=20))
    await hot.engine.wait_for(lambda s: s.in_flight == 1)
    assert (await answer(client, "waiting")).host == cold.url
    assert (await slow).host == hot.url


async def test_least_loaded_goes_by_in_flight_over_slots(
    sim_factory, stack_factory, client: Client
) -> None:
    """Four long requests on idle warm hosts of six and two slots: three and one (a
    host taking turns, or the first to pull, would give two and two)."""
    big, small = await warm_hosts(sim_factory, 40, 40)
    await stack_factory(
        [big.url, small.url],
        executor={"host_slots": {big.url: 6, small.url: 2}},
        routing={"host_strategy": "least-loaded"},
    )
    done = await asyncio.gather(*(answer(client, f"q{i}", tokens=20) for i in range(4)))
    assert Counter(d.host for d in done) == {big.url: 3, small.url: 1}


async def test_round_robin_gives_each_host_the_same_share(
    sim_factory, stack_factory, client: Client
) -> None:
    """Six requests at once on a fast and a slow host: three each, although the fast one
    could have served most of them while the slow one worked."""
    fast, slow = await warm_hosts(sim_factory, 0, 100)
    await stack_factory(
        [fast.url, slow.url],
        executor={"max_inflight_per_model": 2},
        routing={"host_strategy": "round-robin"},
    )
    done = await asyncio.gather(*(answer(client, f"q{i}", tokens=12) for i in range(6)))
    assert Counter(d.host for d in done) == {fast.url: 3, slow.url: 3}


async def test_adaptive_sends_most_work_to_the_faster_host(
    sim_factory, stack_factory, client: Client
) -> None:
    """Sequential requests: once each host has a measured speed, the faster one wins."""
    slow, fast = await warm_hosts(sim_factory, 40, 400)
    await stack_factory([slow.url, fast.url], routing={"host_strategy": "adaptive"})
    done = [await answer(client, f"q{i}", tokens=8) for i in range(12)]
    hosts = Counter(d.host for d in done)
    assert hosts[fast.url] >= 10, hosts


async def test_batch_work_leaves_a_slot_for_interactive_work(
    sim_factory, stack_factory, client: Client
) -> None:
    """A flood of batch work holds at most all slots but one: an interactive request
    arriving during it starts at once and ends before the second batch request."""
    (sim,) = await warm_hosts(sim_factory, 40)
    await stack_factory([sim.url], executor={"max_inflight_per_model": 2})
    order: list[str] = []

    async def run(name: str, **fields: object) -> None:
        await answer(client, name, tokens=20, **fields)
        order.append(name)

    batch = [asyncio.ensure_future(run(f"batch{i}", priority="batch")) for i in range(4)]

    async def all_queued() -> bool:
        queue = next(q for q in (await client.queues()).models if q.model == MODEL)
        return queue.batch + queue.running == 4 and sim.engine.stats.in_flight > 0

    await eventually(all_queued)
    await run("interactive")
    await asyncio.gather(*batch)
    assert order.index("interactive") <= 1, order
    assert sim.engine.stats.requests["/api/generate"] == 1 + 4 + 1  # warm-up, batch, interactive


async def test_a_full_queue_answers_overloaded_with_retry_after(
    sim_factory, stack_factory, client: Client
) -> None:
    """Beyond `queue_max` waiting or running requests the router refuses with a hint;
    queue depth shows on the stats subject."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="stall", models=[MODEL]))
    await stack_factory([sim.url], executor={"max_inflight_per_model": 1}, routing={"queue_max": 3})
    streams = [
        await client.generate(MODEL, f"q{i}", stream=True, options={"num_predict": 2})
        for i in range(3)
    ]
    with pytest.raises(Overloaded) as refused:
        await client.generate(MODEL, "one too many", options={"num_predict": 2})
    assert refused.value.retryable and refused.value.retry_after_ms >= 100
    await sim.engine.wait_for(lambda s: s.in_flight == 1)

    async def depth() -> bool:
        stats = await client.queues()
        queue = next(q for q in stats.models if q.model == MODEL)
        return (queue.interactive, queue.running, queue.slots) == (2, 1, 1)

    await eventually(depth)
    for stream in streams:
        await client.cancel(stream.request_id)
        await stream.aclose()


async def test_a_host_failing_slowly_leaves_rotation_within_the_window(
    sim_factory, stack_factory, client: Client
) -> None:
    """Failures below the threshold still open the circuit once they went on for
    `circuit_window_s` without a success; the requests themselves are served elsewhere."""
    bad, good = await warm_hosts(sim_factory, 0, 0)
    bad.engine.set_fault(Fault(kind="error"))
    stack = await stack_factory(
        [bad.url, good.url],
        executor={"circuit_failures": 100, "circuit_window_s": 0.5, "circuit_cooldown_s": 60},
        routing={"host_strategy": "round-robin"},
    )
    for i in range(2):
        assert (await answer(client, f"q{i}")).host == good.url
    failures = bad.engine.stats.faults["error"]
    assert 1 <= failures < 100
    await stack.registry.wait_until(
        lambda r: any(MODEL in h.blocked for h in r.hosts_seen()), timeout=5
    )
    flaky = next(e for e in stack.executors if e.host_url == bad.url)
    assert flaky.circuit(MODEL).state == "open" and flaky.circuit(MODEL).failures == failures


async def test_every_router_learns_from_every_request(
    sim_factory, stack_factory, client: Client
) -> None:
    """Two routers share the work; each one's model statistics count all of it."""
    sim = await sim_factory(models=MODELS)
    first = await stack_factory([sim.url])
    second = await stack_factory([sim.url], actors=("router",))
    for i in range(10):
        await client.generate(MODEL, f"q{i}", options={"num_predict": 2})

    async def both_saw_all() -> bool:
        counts = [getattr(s.router.stats.get(MODEL), "successes", 0) for s in (first, second)]
        return counts == [10, 10]

    await eventually(both_saw_all)


async def test_rate_limits_hold_across_routers(sim_factory, stack_factory, client: Client) -> None:
    """rpm is shared by every router: two routers admit two requests a minute together;
    the third gets `rate_limited` with the wait it would need."""
    sim = await sim_factory(models=MODELS)
    limits = {"limits": {"fast": {"rpm": 2}}}  # `fast` is MODEL in the test roles
    await stack_factory([sim.url], routing=limits)
    await stack_factory([sim.url], actors=("router",), routing=limits)
    for i in range(2):
        assert (await answer(client, f"q{i}")).model == MODEL
    with pytest.raises(RateLimited) as refused:
        await answer(client, "third")
    assert refused.value.retryable and 25_000 <= refused.value.retry_after_ms <= 30_000
    assert sim.engine.stats.requests["/api/generate"] == 2


async def test_a_request_within_its_deadline_waits_for_the_token_limit(
    sim_factory, stack_factory, client: Client
) -> None:
    """tpm: a request whose tokens fit after a short wait waits and is served; without a
    deadline to wait in, the same request is refused."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="stall", count=1))  # the first request never ends ...
    await stack_factory([sim.url], routing={"limits": {MODEL: {"tpm": 6000}}})
    # ... so its estimate (1 + 5999 tokens, a minute's allowance) is never settled.
    first = await client.generate(MODEL, "x", stream=True, options={"num_predict": 5999})
    with pytest.raises(RateLimited) as refused:
        await answer(client, "y", tokens=40)
    assert 300 <= refused.value.retry_after_ms <= 410  # 41 tokens at 10 ms each
    done = await answer(client, "y", tokens=40, deadline_ms=20_000)
    assert done.model == MODEL
    await first.cancel()
    await first.aclose()


async def test_a_mixed_fleet_with_a_failing_host_serves_everything_elsewhere(
    sim_factory, stack_factory, client: Client
) -> None:
    """Three hosts of different speeds, one failing: every request succeeds, no `done`
    names the failing host, and its circuit opens after its few failures."""
    bad, slow, fast = await warm_hosts(sim_factory, 0, 100, 400)
    bad.engine.set_fault(Fault(kind="error"))
    stack = await stack_factory([bad.url, slow.url, fast.url], executor={"max_attempts": 10})
    done = await asyncio.gather(*(answer(client, f"q{i}", tokens=8) for i in range(24)))
    hosts = Counter(d.host for d in done)
    assert set(hosts) <= {slow.url, fast.url} and sum(hosts.values()) == 24
    assert hosts[fast.url] > hosts[slow.url], hosts
    assert bad.engine.stats.faults["error"] <= stack.config.executor.circuit_failures
