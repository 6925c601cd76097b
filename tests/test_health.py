"""The health monitor: host states from real checks, executors' signals, hosts joining and
leaving, and the fleet view, against simulated hosts and a real nats-server."""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec
import pytest

from actors.backends.admin import Check
from actors.health.judge import judge
from bus.client import Client
from bus.errors import BadRequest, NoHealthyHost
from bus.subjects import model_token
from schemas.fleet import FleetStatus, HostEvent, HostHealth, HostState
from schemas.internal import HostInfo
from tests.helpers import eventually

MODELS = ["llama3.2:3b", "qwen2.5:7b"]
HEALTH = ("router", "executor", "health")


def _report(**fields: object) -> HostInfo:
    return HostInfo(host="http://h:1", executor="e1", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("check", "reports", "state", "why"),
    [
        (Check(failures=["version: refused"]), [], HostState.DOWN, "refused"),
        (Check(version="1", models=[], loaded=[], latency_ms=3), [], HostState.UP, ""),
        (
            Check(version="1", models=[], failures=["ps: 500"], latency_ms=3),
            [],
            HostState.DEGRADED,
            "ps: 500",
        ),
        (Check(version="1", models=[], loaded=[], latency_ms=1500), [], HostState.DEGRADED, "slow"),
        (
            Check(version="1", models=[], loaded=[]),
            [_report(up=False)],
            HostState.DEGRADED,
            "executor e1 cannot reach",
        ),
        (
            Check(version="1", models=[], loaded=[]),
            [_report(blocked=["m"])],
            HostState.DEGRADED,
            "circuit open for m",
        ),
    ],
)
def test_judge(check: Check, reports: list[HostInfo], state: HostState, why: str) -> None:
    got, reason = judge(check, reports, slow_ms=1000)
    assert got is state and why in reason


async def _status(client: Client) -> FleetStatus:
    return await client.fleet.status()


def _host(status: FleetStatus, url: str) -> HostHealth:
    return next(h for h in status.hosts if h.host == url)


async def test_the_fleet_view_shows_hosts_models_and_load(
    sim_factory, stack_factory, client: Client
) -> None:
    """Two hosts: both up with their models; after a request the host that served it shows
    the model loaded, its VRAM, its slots and its median time to first token."""
    a = await sim_factory(models=MODELS)
    b = await sim_factory(models=MODELS[:1])
    stack = await stack_factory([a.url, b.url], actors=HEALTH)
    status = await _status(client)
    assert {h.host: h.state for h in status.hosts} == {a.url: HostState.UP, b.url: HostState.UP}
    assert {m.name for m in _host(status, a.url).models} == set(MODELS)
    assert _host(status, b.url).version == "0.12.6"
    assert all(not row.loaded for row in status.rows)
    done = await client.generate("qwen2.5:7b", "hello", options={"num_predict": 3})
    assert done.host == a.url

    async def served() -> bool:
        rows = {(r.host, r.model): r for r in (await _status(client)).rows}
        row = rows[(a.url, "qwen2.5:7b")]
        return row.loaded and row.size_vram > 0 and row.ttft_ms_p50 is not None

    await eventually(served, timeout=8.0)  # VRAM shows at the host's next check
    rows = {(r.host, r.model): r for r in (await _status(client)).rows}
    row = rows[(a.url, "qwen2.5:7b")]
    assert row.slots == 4 and row.circuit == "closed"
    assert not rows[(b.url, "llama3.2:3b")].loaded
    assert (b.url, "qwen2.5:7b") not in rows
    assert stack.metrics.url is not None
    async with httpx.AsyncClient() as http:
        scraped = (await http.get(stack.metrics.url)).text
    assert f'ollamesh_host_state{{host="{a.url}",state="up"}} 1.0' in scraped
    assert f'ollamesh_host_state{{host="{a.url}",state="down"}} 0.0' in scraped


async def test_health_checks_never_touch_the_generate_path(
    sim_factory, stack_factory, client: Client
) -> None:
    sim = await sim_factory(models=MODELS)
    stack = await stack_factory([sim.url], actors=HEALTH)
    assert stack.health is not None
    before = sim.engine.stats.requests["/api/version"]

    # The executor asks every second, the monitor every 5 s: a few rounds of both.
    await eventually(lambda: sim.engine.stats.requests["/api/version"] >= before + 5, 10.0)
    seen = set(sim.engine.stats.requests)
    assert seen <= {"/api/version", "/api/tags", "/api/ps"}, seen
    assert sim.engine.stats.generations == 0 and not sim.engine.running()


async def test_a_dead_host_is_down_within_one_interval_and_the_change_is_an_event(
    sim_factory, stack_factory, client: Client, nc, prefix: str
) -> None:
    """No executor: the monitor's own checks (every 5 s by default) find the host dead."""
    sim = await sim_factory(models=MODELS)
    events: asyncio.Queue[HostEvent] = asyncio.Queue()

    async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
        await events.put(msgspec.json.decode(msg.data, type=HostEvent))

    await nc.subscribe(f"{prefix}.v1.events.host", cb=on_event)
    await stack_factory([sim.url], actors=("health",))
    first = await asyncio.wait_for(events.get(), 5.0)
    assert (first.host, first.state, first.previous) == (sim.url, HostState.UP, None)
    await sim.kill()
    # One interval (5 s) at worst, plus slack for a loaded CI machine.
    down = await asyncio.wait_for(events.get(), 6.5)
    assert (down.state, down.previous) == (HostState.DOWN, HostState.UP), down
    assert _host(await _status(client), sim.url).state is HostState.DOWN
    await sim.start()
    back = await asyncio.wait_for(events.get(), 6.5)
    assert (back.state, back.previous) == (HostState.UP, HostState.DOWN)


async def test_an_executor_that_loses_its_host_makes_the_monitor_check_at_once(
    sim_factory, stack_factory, client: Client
) -> None:
    """The monitor checks only every 60 s here; the executor's own failure (it polls every
    second in tests) is what marks the host down."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=HEALTH, health={"interval_s": 60.0})
    assert _host(await _status(client), sim.url).state is HostState.UP
    await sim.kill()

    async def down() -> bool:
        return _host(await _status(client), sim.url).state is HostState.DOWN

    await eventually(down, timeout=5.0)


async def test_a_host_joins_with_its_executor_and_leaves_when_it_stops(
    sim_factory, stack_factory, client: Client
) -> None:
    """The monitor's config names host A only; an executor elsewhere brings host B."""
    a = await sim_factory(models=MODELS)
    b = await sim_factory(models=MODELS[:1])
    await stack_factory([a.url], actors=HEALTH)
    other = await stack_factory([b.url], actors=("executor",))

    async def hosts() -> set[str]:
        return {h.host for h in (await _status(client)).hosts if h.executors}

    async def joined() -> bool:
        return await hosts() == {a.url, b.url}

    await eventually(joined, timeout=5.0)
    await other.stop(grace=1.0)

    async def left() -> bool:
        return {h.host for h in (await _status(client)).hosts} == {a.url}

    await eventually(left, timeout=5.0)


async def test_a_bad_health_request_is_a_typed_error(
    stack_factory, sim_factory, nc, prefix
) -> None:
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=("health",))
    reply = await nc.request(f"{prefix}.v1.health", b'{"nonsense": 1}', timeout=5)
    assert b'"bad_request"' in reply.data
    with pytest.raises(BadRequest):
        await Client(nc=nc, prefix=prefix).fleet.models("show")


async def test_routers_take_a_host_the_monitor_found_down_out_of_rotation(
    sim_factory, stack_factory, client: Client
) -> None:
    """A monitor (elsewhere: the local one is stopped) found the host down while its
    executor still says up: routers answer no_healthy_host until the verdict goes."""
    sim = await sim_factory(models=MODELS)
    stack = await stack_factory([sim.url], actors=HEALTH)
    assert stack.registry is not None
    await client.generate("llama3.2:3b", "hi", options={"num_predict": 2})
    verdict = HostHealth(host=sim.url, state=HostState.DOWN, reason="test", checked_at=time.time())
    await stack.health.stop(grace=1.0)  # type: ignore[union-attr]
    health_kv = await stack.nc.jetstream().key_value(f"{stack.subjects.health_bucket}")  # type: ignore[union-attr]
    await health_kv.put(model_token(sim.url), msgspec.json.encode(verdict))

    await eventually(lambda: stack.registry.found_down(sim.url))  # type: ignore[union-attr]
    with pytest.raises(NoHealthyHost):
        await client.generate("llama3.2:3b", "hi", options={"num_predict": 2})
    await health_kv.delete(model_token(sim.url))
    done = await client.generate("llama3.2:3b", "hi", options={"num_predict": 2})
    assert done.host == sim.url
