"""Hosts that are down, die, stall or say busy: a transparent retry or a typed error."""

from __future__ import annotations

import asyncio
import socket

import pytest

from actors.simulator import Fault
from bus.client import Client
from bus.errors import Cancelled, NoHealthyHost, Timeout, UpstreamError
from bus.subjects import Subjects
from schemas.internal import RequestEvent, decode_event
from tests.helpers import assert_well_formed, eventually, stored_stream, warm

MODELS = ["llama3.2:3b", "qwen2.5:7b"]


def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
async def events(nc, prefix: str):
    """Every request event published during the test."""
    seen: list[RequestEvent] = []

    async def on_event(msg) -> None:
        seen.append(decode_event(msg.data))

    sub = await nc.subscribe(Subjects(prefix).event("request"), cb=on_event)
    yield seen
    await sub.unsubscribe()


async def test_a_host_down_at_start_gives_no_healthy_host(stack_factory, client: Client) -> None:
    """With the only host unreachable, requests fail at once with a retryable typed error."""
    await stack_factory([closed_port_url()])
    with pytest.raises(NoHealthyHost) as info:
        await client.generate("llama3.2:3b", "hi")
    assert info.value.retryable


async def test_work_avoids_a_host_that_is_down_at_start(
    sim_factory, stack_factory, client: Client
) -> None:
    """One host down, one up: every request is served by the one that is up."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([closed_port_url(), sim.url])
    results = await asyncio.gather(
        *(client.generate("llama3.2:3b", f"q{i}", options={"num_predict": 3}) for i in range(5))
    )
    assert {r.host for r in results} == {sim.url}


async def test_busy_503_is_retried_on_another_host(
    sim_factory, stack_factory, client: Client, events
) -> None:
    """A host answering 503 hands the work back; the other host serves it, unseen by the client."""
    busy = await sim_factory(models=MODELS)
    good = await sim_factory(models=MODELS)
    busy.engine.set_fault(Fault(kind="busy"))
    # Each attempt may land on either host; enough attempts make reaching `good` certain.
    await stack_factory([busy.url, good.url], executor={"max_attempts": 30})
    results = await asyncio.gather(
        *(client.generate("llama3.2:3b", f"q{i}", options={"num_predict": 3}) for i in range(6))
    )
    assert {r.host for r in results} == {good.url}
    assert busy.engine.stats.requests.get("/api/generate", 0) >= 1
    # Events are published as requests end, after their replies.
    await eventually(lambda: any(e.attempt > 1 and e.outcome == "ok" for e in events))


async def test_a_transient_503_on_the_only_host_is_retried(
    sim_factory, stack_factory, client: Client
) -> None:
    """Two busy answers, then the same host serves the request."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="busy", count=2))
    await stack_factory([sim.url])
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 4})
    assert await stream.text()
    assert stream.done is not None and stream.done.eval_count == 4


async def test_a_host_that_stays_busy_ends_in_a_typed_error(
    sim_factory, stack_factory, client: Client, nc, prefix: str
) -> None:
    """After max_attempts, the stream ends with one retryable upstream_error."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="error"))
    await stack_factory([sim.url], executor={"max_attempts": 3})
    stream = await client.generate("llama3.2:3b", "hi", stream=True)
    with pytest.raises(UpstreamError) as info:
        await stream.text()
    assert info.value.retryable
    assert_well_formed(await stored_stream(nc, Subjects(prefix), stream.request_id))


async def test_a_host_dying_mid_stream_ends_the_stream_with_an_error(
    sim_factory, stack_factory, client: Client, nc, prefix: str
) -> None:
    """Tokens already sent cannot move: the client gets a clean retryable error, no hang."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="die_after", tokens=5))
    await stack_factory([sim.url], executor={"coalesce_ms": 0})
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 50})
    got = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in stream:
            got.append(chunk)
    assert got and info.value.retryable
    assert_well_formed(await stored_stream(nc, Subjects(prefix), stream.request_id))


async def test_an_error_line_mid_stream_is_a_failure(
    sim_factory, stack_factory, client: Client
) -> None:
    """Ollama's `{"error": ...}` line after the first token ends the stream with upstream_error."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="error_after", tokens=3))
    await stack_factory([sim.url])
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 50})
    with pytest.raises(UpstreamError, match="mid-stream"):
        await stream.text()


async def test_a_stalled_stream_hits_the_idle_deadline(
    sim_factory, stack_factory, client: Client
) -> None:
    """A host that stops sending but keeps the connection open is cut off after idle_timeout."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="stall", tokens=2))
    await stack_factory([sim.url], executor={"idle_timeout_s": 0.5})
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 50})
    with pytest.raises(Timeout, match="next token"):
        await stream.text()


async def test_a_slow_first_token_hits_the_first_token_deadline(
    sim_factory, stack_factory, client: Client
) -> None:
    """Waiting for the first token is bounded too."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="slow_first_token", delay_ms=5000))
    await stack_factory([sim.url], executor={"first_token_timeout_s": 0.3})
    with pytest.raises(Timeout, match="first token"):
        await client.generate("llama3.2:3b", "hi")


async def test_cancel_stops_a_running_stream(
    sim_factory, stack_factory, client: Client, nc, prefix: str
) -> None:
    """`cancel` closes the host stream; the client's stream ends with `cancelled`."""
    sim = await sim_factory(models=MODELS, tokens_per_second=100)
    await stack_factory([sim.url])
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 5000})
    await stream.__anext__()
    await stream.cancel()
    with pytest.raises(Cancelled):
        await stream.text()
    assert_well_formed(await stored_stream(nc, Subjects(prefix), stream.request_id))
    await sim.engine.wait_idle(timeout=5)  # the host stream was closed, freeing its slot


async def test_cancel_drops_queued_work_before_it_reaches_a_host(
    sim_factory, stack_factory, client: Client
) -> None:
    """Work cancelled while waiting in the queue is answered `cancelled` and never generated."""
    sim = await sim_factory(models=MODELS, tokens_per_second=100)
    await stack_factory([sim.url], executor={"max_inflight_per_model": 1})
    first = await client.generate("llama3.2:3b", "a", stream=True, options={"num_predict": 5000})
    await first.__anext__()
    queued = await client.generate("llama3.2:3b", "b", stream=True, options={"num_predict": 5})
    await queued.cancel()
    await first.cancel()
    with pytest.raises(Cancelled, match="queued"):
        await queued.text()
    assert sim.engine.stats.generations == 1


async def test_work_past_its_deadline_never_reaches_a_host(
    sim_factory, stack_factory, client: Client
) -> None:
    """`deadline_ms` expires in the queue: `timeout`, and the host never sees the request."""
    sim = await sim_factory(models=MODELS, tokens_per_second=100)
    await stack_factory([sim.url], executor={"max_inflight_per_model": 1})
    first = await client.generate("llama3.2:3b", "a", stream=True, options={"num_predict": 40})
    await first.__anext__()
    late = await client.generate("llama3.2:3b", "b", stream=True, deadline_ms=50)
    with pytest.raises(Timeout, match="queued"):
        await late.text()
    await first.text()
    assert sim.engine.stats.generations == 1


async def test_stopping_an_executor_finishes_its_streams(
    sim_factory, stack_factory, client: Client
) -> None:
    """A graceful stop lets in-flight answers finish instead of cutting them."""
    sim = await sim_factory(models=MODELS, tokens_per_second=200)
    stack = await stack_factory([sim.url])
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 40})
    await stream.__anext__()
    stopping = asyncio.create_task(stack.executors[0].stop(grace=10))
    text = await stream.text()
    await stopping
    assert stream.done is not None and stream.done.eval_count == 40 and text


async def test_a_stream_that_ends_without_done_is_a_failure(
    sim_factory, stack_factory, client: Client, nc, prefix: str
) -> None:
    """HTTP 200 and a clean end are not success: without `done: true` the answer failed."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="truncate_after", tokens=4))
    await stack_factory([sim.url])
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 50})
    with pytest.raises(UpstreamError, match="without done"):
        await stream.text()
    assert_well_formed(await stored_stream(nc, Subjects(prefix), stream.request_id))


async def test_a_stopping_executor_hands_back_work_it_has_not_started(
    sim_factory, stack_factory, client: Client
) -> None:
    """Work still waiting for its first token when the grace ends goes to another host."""
    slow = await sim_factory(models=MODELS)
    slow.engine.set_fault(Fault(kind="slow_first_token", delay_ms=10_000, count=1))
    first = await stack_factory([slow.url])
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 5})
    await slow.engine.wait_for(lambda stats: stats.in_flight == 1)
    good = await sim_factory(models=MODELS)
    await stack_factory([good.url], actors=("executor",))
    await first.executors[0].stop(grace=0.2)
    assert await stream.text()
    assert stream.done is not None and stream.done.host == good.url


async def test_a_failing_host_leaves_rotation_and_returns_after_one_probe(
    sim_factory, stack_factory, client: Client
) -> None:
    """Three failures open the host's circuit; after the cooldown one good probe closes it."""
    bad = await sim_factory(models=MODELS)
    good = await sim_factory(models=MODELS)
    for sim in (bad, good):  # both warm, and round-robin: the bad host gets its turns
        await warm(sim.url, "llama3.2:3b")
    bad.engine.set_fault(Fault(kind="error"))
    stack = await stack_factory(
        [bad.url, good.url],
        executor={"circuit_failures": 3, "circuit_cooldown_s": 0.3, "max_attempts": 30},
        routing={"host_strategy": "round-robin"},
    )
    flaky = next(e for e in stack.executors if e.host_url == bad.url)
    for i in range(10):
        result = await client.generate("llama3.2:3b", f"q{i}", options={"num_predict": 2})
        assert result.host == good.url
    assert bad.engine.stats.faults["error"] == 3  # failed requests (the warm-up was fine)
    assert flaky.circuit("llama3.2:3b").state == "open"
    bad.engine.clear_faults()
    await stack.registry.wait_until(lambda r: not any(h.blocked for h in r.hosts()), timeout=5)
    for i in range(50):  # sequential, so a request reaches the half-open host before long
        result = await client.generate("llama3.2:3b", f"r{i}", options={"num_predict": 2})
        if result.host == bad.url:
            break
    assert result.host == bad.url
    assert flaky.circuit("llama3.2:3b").state == "closed"
    assert flaky._pullers["llama3.2:3b"].slots == stack.config.executor.max_inflight_per_model


async def test_a_model_no_host_serves_falls_back_to_backup(
    sim_factory, stack_factory, client: Client
) -> None:
    """With its only host down, the work runs on `backup`, and `done` says so."""
    sim = await sim_factory(models=["llama3.2:3b"])
    await stack_factory(
        [closed_port_url(), sim.url],
        roles={"primary": "qwen2.5:7b", "backup": "llama3.2:3b"},
    )
    stream = await client.generate("primary", "hi", stream=True, options={"num_predict": 3})
    await stream.text()
    assert stream.done is not None
    assert stream.done.model == "llama3.2:3b" and stream.done.fallback_from == "qwen2.5:7b"
    with pytest.raises(NoHealthyHost):
        await client.generate("primary", "hi", fallback=False)


async def test_a_model_slow_to_its_first_token_falls_back(
    sim_factory, stack_factory, client: Client
) -> None:
    """A first-token timeout moves unstarted work to the next model of the chain."""
    sim = await sim_factory(models=MODELS)
    sim.engine.set_fault(Fault(kind="slow_first_token", delay_ms=5000, models=["qwen2.5:7b"]))
    await stack_factory(
        [sim.url],
        roles={"primary": "qwen2.5:7b", "backup": "llama3.2:3b"},
        executor={"first_token_timeout_s": 0.3},
        routing={"fallbacks": {"primary": ["backup"]}},
    )
    result = await client.generate("primary", "hi", options={"num_predict": 3})
    assert result.model == "llama3.2:3b" and result.fallback_from == "qwen2.5:7b"
    with pytest.raises(Timeout, match="first token"):
        await client.generate("primary", "hi", fallback=False)
