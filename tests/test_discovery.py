"""Observability: NATS micro-service discovery (in shapes nats-py's own micro module
reads) and the Prometheus endpoint of each process."""

from __future__ import annotations

import json

import httpx
import pytest
from nats.micro.service import ServiceInfo, ServicePing, ServiceStats

from bus.client import Client
from bus.errors import BadRequest
from tests.helpers import eventually

MODELS = ["llama3.2:3b"]


async def test_actors_answer_ping_info_and_stats(
    sim_factory, stack_factory, client: Client, nc, prefix: str
) -> None:
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    await client.generate("llama3.2:3b", "hi", options={"num_predict": 2})
    with pytest.raises(BadRequest):
        await client.generate("llama3.2:3b", "", options={"num_predict": 2})
    ping = ServicePing.from_dict(
        json.loads((await nc.request("$SRV.PING.ollamesh-router", b"", timeout=5)).data)
    )
    assert ping.name == "ollamesh-router" and ping.metadata == {"prefix": prefix}
    info = ServiceInfo.from_dict(
        json.loads((await nc.request(f"$SRV.INFO.ollamesh-router.{ping.id}", b"", timeout=5)).data)
    )
    generate = next(e for e in info.endpoints if e.subject == f"{prefix}.v1.generate")
    assert generate.queue_group == "router"
    stats = ServiceStats.from_dict(
        json.loads((await nc.request(f"$SRV.STATS.ollamesh-router.{ping.id}", b"", timeout=5)).data)
    )
    counted = next(e for e in stats.endpoints if e.subject == f"{prefix}.v1.generate")
    assert counted.num_requests == 2 and counted.num_errors == 1
    assert counted.last_error.startswith("bad_request") and counted.processing_time > 0
    executor = json.loads((await nc.request("$SRV.PING.ollamesh-executor", b"", timeout=5)).data)
    assert executor["metadata"] == {"prefix": prefix, "host": sim.url, "kind": "ollama"}


async def test_each_process_serves_prometheus_metrics(
    sim_factory, stack_factory, client: Client
) -> None:
    """Requests by outcome, time to first token, queue depth and host state on /metrics."""
    sim = await sim_factory(models=MODELS)
    stack = await stack_factory([sim.url])
    await client.generate("llama3.2:3b", "hi", options={"num_predict": 2})
    with pytest.raises(BadRequest):
        await client.generate("llama3.2:3b", "", options={"num_predict": 2})
    assert stack.metrics.url is not None
    model = 'model="llama3.2:3b"'

    async def scraped() -> bool:
        async with httpx.AsyncClient() as http:
            text = (await http.get(stack.metrics.url)).text
        return (
            f'ollamesh_requests_total{{kind="generate",{model},outcome="ok"}} 1.0' in text
            and f"ollamesh_time_to_first_token_seconds_count{{{model}}} 1.0" in text
            and f'ollamesh_host_up{{host="{sim.url}"}} 1.0' in text
            and f'ollamesh_queue_depth{{{model},priority="interactive"}} 0.0' in text
        )

    await eventually(scraped)
