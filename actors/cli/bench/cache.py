"""`ollamesh bench --cache`: answers from the cache through NATS, and single-flight.

Runs nats-server, an embedded Postgres, the simulator at full speed, and an executor, a
router and a cache keeper in their own processes. Measures, in the same run: time to
first token of a direct (uncached) call to the simulator; through NATS at concurrency 1,
time to first token of a cacheable request that misses (it claims the answer for
single-flight, then generates) and of a cache hit; cache hits per second from the one
router at concurrency 32; and how many upstream calls 50 identical concurrent requests
make.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx

from actors.cli.bench.harness import (
    MODEL,
    fleet_with_database,
    p50_p99,
    percentile,
    progress,
    wait_for,
)
from bus.client import Client

__all__ = ["cache_bench"]

_OPTIONS = {"temperature": 0, "num_predict": 16}
_TARGETS = {"hit_ttft_p50_ms_max": 1.0, "hits_per_s_min": 3000, "single_flight_upstream": 1}
_CONCURRENCY = 32
_SINGLE_FLIGHT = 50


async def cache_bench(requests: int) -> dict[str, Any]:
    """Measure the cache; return the figures."""
    prefix = f"cache{uuid.uuid4().hex[:8]}"
    async with (
        fleet_with_database(prefix, "cache") as (nats_url, sim_url, procs),
        Client(nats_url, prefix=prefix, timeout=60.0, name="bench-cache") as client,
        httpx.AsyncClient(base_url=sim_url, timeout=60.0) as http,
    ):
        progress(f"nats {nats_url}, simulator {sim_url}, prefix {prefix}")

        async def cached() -> None:
            result = await client.generate(MODEL, "the cached question", options=_OPTIONS)
            if not result.cached:
                raise TimeoutError("not cached yet")

        await wait_for("the cache", cached, 30.0, procs)
        direct = [await _direct_ttft(http, f"direct {i}") for i in range(requests)]
        misses = [await _ttft(client, f"fresh {i}", cached=False) for i in range(requests)]
        hits = [await _ttft(client, "the cached question", cached=True) for _ in range(requests)]
        rate = await _hits_per_s(client, requests * 4)
        upstream = await _single_flight(client, http)
    d50, h50, m50 = percentile(direct, 50), percentile(hits, 50), percentile(misses, 50)
    return {
        "requests": requests,
        "ttft_ms": {
            "direct_uncached": p50_p99(direct),
            "cache_miss": p50_p99(misses),
            "cache_hit": p50_p99(hits),
            "miss_added_p50": round(m50 - d50, 3),
            "hit_over_direct_p50": round(h50 / d50, 2),
        },
        "hits_per_s": {"concurrency": _CONCURRENCY, "rate": round(rate, 1)},
        "single_flight": {"identical_requests": _SINGLE_FLIGHT, "upstream_calls": upstream},
        "targets": _TARGETS
        | {
            "met": {
                "hit_ttft_p50": h50 <= _TARGETS["hit_ttft_p50_ms_max"],
                "hits_per_s": rate >= _TARGETS["hits_per_s_min"],
                "single_flight": upstream == _TARGETS["single_flight_upstream"],
            }
        },
    }


async def _direct_ttft(http: httpx.AsyncClient, prompt: str) -> float:
    body = {"model": MODEL, "prompt": prompt, "options": _OPTIONS}
    t0 = time.perf_counter()
    first = 0.0
    async with http.stream("POST", "/api/generate", json=body) as resp:
        async for _ in resp.aiter_raw():
            first = first or time.perf_counter() - t0
    return first * 1000


async def _ttft(client: Client, prompt: str, *, cached: bool) -> float:
    """Time to first token of a cacheable request through ollamesh, hit or miss."""
    t0 = time.perf_counter()
    async with await client.generate(MODEL, prompt, stream=True, options=_OPTIONS) as stream:
        first = 0.0
        async for _ in stream:
            first = first or time.perf_counter() - t0
    assert stream.done is not None and stream.done.cached is cached
    return first * 1000


async def _hits_per_s(client: Client, n: int) -> float:
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            result = await client.generate(MODEL, "the cached question", options=_OPTIONS)
            assert result.cached

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(_CONCURRENCY)))
    return n / (time.perf_counter() - t0)


async def _single_flight(client: Client, http: httpx.AsyncClient) -> int:
    """Upstream generate calls made by 50 identical concurrent requests."""

    async def generated() -> int:
        stats = (await http.get("/_sim/stats")).json()
        return int(stats["requests"].get("/api/generate", 0))

    before = await generated()
    options = {"temperature": 0, "num_predict": 64}
    answers = await asyncio.gather(
        *(
            client.generate(MODEL, "one question for fifty", options=options)
            for _ in range(_SINGLE_FLIGHT)
        )
    )
    assert len({a.response for a in answers}) == 1
    return await generated() - before
