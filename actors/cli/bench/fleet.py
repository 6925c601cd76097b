"""`ollamesh bench --fleet`: the host strategies on a skewed fleet, side by side.

Three simulated hosts answer at 50, 100 and 200 tokens/s per stream; the slow one runs
a single request at a time, the others four. For each host strategy the same requests
go through a fresh ollamesh (router and executors in this process, one nats-server for
all) from 64 concurrent streams; the report gives total latency p50/p99, throughput, and
each host's share, plus how much each strategy cuts round-robin's p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import msgspec

from actors.cli.bench.harness import p50_p99, progress
from actors.executor.placement import HOST_STRATEGIES
from actors.runtime.supervisor import Stack
from actors.simulator import SimulatorServer
from bus.client import Client
from bus.config import Config
from bus.errors import OllameshError
from bus.server import EmbeddedNats

__all__ = ["FLEET", "fleet_bench"]

_MODEL = "bench:1b"
# (tokens per second per stream, parallel requests) of each host.
FLEET = ((50.0, 1), (100.0, 4), (200.0, 4))
_TARGET_P99_CUT = 0.30
_CALL_TIMEOUT_S = 300.0


async def fleet_bench(requests: int, tokens: int, streams: int) -> dict[str, Any]:
    """Run every host strategy on the skewed fleet; return the figures."""
    runs: dict[str, dict[str, Any]] = {}
    async with EmbeddedNats() as server:
        for strategy in HOST_STRATEGIES:
            runs[strategy] = await _run(server.url, strategy, requests, tokens, streams)
            r = runs[strategy]
            progress(
                f"fleet {strategy}: p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']}"
                f" ms, {r['requests_per_s']} req/s, shares {r['share']}"
            )
    rr = runs["round-robin"]["latency_ms"]["p99"]
    cuts = {
        s: round(1 - runs[s]["latency_ms"]["p99"] / rr, 3)
        for s in HOST_STRATEGIES
        if s != "round-robin"
    }
    return {
        "fleet": [{"tokens_per_s": tps, "slots": slots} for tps, slots in FLEET],
        "streams": streams,
        "requests": requests,
        "num_predict": tokens,
        "strategies": runs,
        "p99_cut_vs_round_robin": cuts,
        "target": {"p99_cut_min": _TARGET_P99_CUT, "met": max(cuts.values()) >= _TARGET_P99_CUT},
    }


async def _run(url: str, strategy: str, requests: int, tokens: int, streams: int) -> dict[str, Any]:
    sims = [
        SimulatorServer([_MODEL], tokens_per_second=tps, num_parallel=slots, max_queue=4096)
        for tps, slots in FLEET
    ]
    async with contextlib.AsyncExitStack() as stack:
        for sim in sims:
            await sim.start()
            stack.push_async_callback(sim.kill)
        await _warm(sims)
        prefix = f"fleet{uuid.uuid4().hex[:8]}"
        config = msgspec.convert(
            {
                "prefix": prefix,
                "ollama_hosts": [s.url for s in sims],
                "nats": {"url": url},
                "roles": {"primary": _MODEL, "backup": _MODEL},
                "routing": {"host_strategy": strategy},
                "metrics": {"port": None},
                "gateway": {"port": 0},
                "executor": {
                    "host_slots": {s.url: slots for s, (_, slots) in zip(sims, FLEET, strict=True)},
                    "shutdown_grace_s": 2.0,
                },
            },
            Config,
        )
        await stack.enter_async_context(Stack(config))
        client = await stack.enter_async_context(
            Client(url, prefix=prefix, timeout=_CALL_TIMEOUT_S, name="fleet-bench")
        )
        latencies: list[float] = []
        hosts: Counter[str] = Counter()
        errors = 0
        todo = iter(range(requests))

        async def worker() -> None:
            nonlocal errors
            for i in todo:
                t0 = time.perf_counter()
                try:
                    async with await client.generate(
                        _MODEL, f"fleet question {i}", stream=True, options={"num_predict": tokens}
                    ) as answer:
                        async for _ in answer:
                            pass
                except OllameshError:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)
                if answer.done is not None:
                    hosts[answer.done.host] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(streams)))
        elapsed = time.perf_counter() - t0
    names = {
        s.url: f"{int(tps)}tok/s x{slots}" for s, (tps, slots) in zip(sims, FLEET, strict=True)
    }
    return {
        "latency_ms": p50_p99(latencies, 1),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "share": {names[h]: n for h, n in sorted(hosts.items(), key=lambda kv: names[kv[0]])},
        "errors": errors,
    }


async def _warm(sims: list[SimulatorServer]) -> None:
    """Load the model on every host first, so no strategy pays (or dodges) a cold start."""
    body = {"model": _MODEL, "prompt": "", "keep_alive": "1h"}
    async with httpx.AsyncClient(timeout=30.0) as http:
        for sim in sims:
            (await http.post(f"{sim.url}/api/generate", json=body)).raise_for_status()
