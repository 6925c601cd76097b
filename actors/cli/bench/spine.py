"""The spine bench: time to first token and throughput, direct to Ollama vs through ollamesh.

Starts nats-server, the simulator at full speed, one router and one executor process, and
sends the same requests to the simulator over httpx and through ollamesh. Each scenario
also gives each process's CPU ms per request (`client` is this process: the httpx and
NATS clients that make the calls).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import uuid
from typing import Any

from actors.cli.bench.cpu import CpuMeter
from actors.cli.bench.harness import (
    MODEL,
    Call,
    Run,
    cpu_by_scenario,
    cpu_meter,
    div,
    each_path,
    fig,
    fleet,
    ollama_call,
    one_connection_clients,
    progress,
    through_sdk,
    unless_one_dies,
    wait_for,
)
from bus.client import Client
from bus.server import EmbeddedNats

__all__ = ["spine_bench"]

_SEED = 42
_STREAMS = 64
_OLLAMESH_READY_S = 20.0
_CALL_TIMEOUT_S = 60.0
_TARGETS = {"added_ttft_p50_ms_max": 2, "added_ttft_p99_ms_max": 6, "requests_per_s_min": 500}


# -- the report --------------------------------------------------------------------------


def _errors(runs: dict[str, Run]) -> dict[str, int]:
    return {path: r.errors for path, r in runs.items()}


def _ttft(runs: dict[str, Run]) -> dict[str, Any]:
    out = {path: run.ttft_ms() for path, run in runs.items()}
    d, o = out["direct"], out["ollamesh"]
    added = {"added_p50": fig(o["p50"] - d["p50"]), "added_p99": fig(o["p99"] - d["p99"])}
    rounded = {path: {k: fig(v) for k, v in out[path].items()} for path in runs}
    return rounded | added | {"errors": _errors(runs)}


def _rate(runs: dict[str, Run]) -> dict[str, Any]:
    d, o = runs["direct"].rate(), runs["ollamesh"].rate()
    return {"direct": fig(d, 1), "ollamesh": fig(o, 1), "ratio": fig(div(o, d))}


def _streams(runs: dict[str, Run], tokens: int) -> dict[str, Any]:
    d, o = runs["direct"], runs["ollamesh"]
    d_rate = div(sum(x.tokens for x in d.outcomes), d.elapsed)
    o_tokens, o_chunks = sum(x.tokens for x in o.outcomes), sum(x.chunks for x in o.outcomes)
    o_rate = div(o_tokens, o.elapsed)
    return {
        "streams": _STREAMS,
        "num_predict": tokens,
        "direct": {"tokens_per_s": fig(d_rate, 1)},
        "ollamesh": {
            "tokens_per_s": fig(o_rate, 1),
            "chunks_per_s": fig(div(o_chunks, o.elapsed), 1),
            "tokens_per_chunk": fig(div(o_tokens, o_chunks), 2),
        },
        "ratio": fig(div(o_rate, d_rate)),
        "errors": _errors(runs),
    }


def _targets(ttft_c1: dict[str, Any], rates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    p50, p99 = (math.inf if v is None else v for v in (ttft_c1["added_p50"], ttft_c1["added_p99"]))
    best = max(r["ollamesh"] or 0.0 for r in rates.values())
    met = {
        "added_ttft_p50": p50 <= _TARGETS["added_ttft_p50_ms_max"],
        "added_ttft_p99": p99 <= _TARGETS["added_ttft_p99_ms_max"],
        "requests_per_s": best >= _TARGETS["requests_per_s_min"],
    }
    return _TARGETS | {"met": met}


async def _measure(
    paths: dict[str, Call], args: argparse.Namespace, cpu: CpuMeter
) -> dict[str, Any]:
    """Run every scenario on both paths; return the report's figures."""
    n, tokens, warmup = args.requests, args.tokens, args.warmup
    c1 = await each_path(paths, "c1", n, 1, tokens, warmup, cpu)
    c32 = await each_path(paths, "c32", n, 32, tokens, warmup, cpu)
    c64 = await each_path(paths, "c64", n, 64, tokens, warmup, cpu)
    streams = await each_path(paths, "stream", _STREAMS, _STREAMS, args.stream_tokens, 0, cpu)
    ttft = {"c1": _ttft(c1), "c32": _ttft(c32)}
    rates = {"c32": _rate(c32), "c64": _rate(c64)}
    scenarios = {"c1": c1, "c32": c32, "c64": c64, f"stream_{_STREAMS}": streams}
    return {
        "ttft_ms": ttft,
        "requests_per_s": rates,
        f"stream_{_STREAMS}": _streams(streams, args.stream_tokens),
        "cpu_ms_per_request": cpu_by_scenario(scenarios),
        "targets": _targets(ttft["c1"], rates),
    }


async def spine_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The spine's figures, with the parameters they were measured with."""
    figures = await _session(args)
    params = {k: getattr(args, k) for k in ("requests", "tokens", "stream_tokens", "warmup")}
    return {"params": params | {"model": MODEL, "seed": _SEED}, **figures}


async def _session(args: argparse.Namespace) -> dict[str, Any]:
    """Bring the fleet up, wait until ollamesh serves, measure; stop everything."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    async with (
        EmbeddedNats() as server,
        fleet(server.url, prefix) as (sim_url, procs),
        contextlib.AsyncExitStack() as stack,
        Client(server.url, prefix=prefix, timeout=_CALL_TIMEOUT_S, name="bench") as client,
    ):
        progress(f"nats {server.url}, simulator {sim_url}, prefix {prefix}")
        http = await one_connection_clients(stack, sim_url, _STREAMS, _CALL_TIMEOUT_S)

        async def one() -> None:
            await client.generate(MODEL, "ready?", options={"num_predict": 1, "seed": _SEED})

        await wait_for("ollamesh", one, _OLLAMESH_READY_S, procs)
        paths = {
            "direct": ollama_call(http, options={"seed": _SEED}),
            # The spine alone: `ollamesh bench --cache` measures the cache's misses and hits.
            "ollamesh": through_sdk(client, options={"seed": _SEED}, cache="off"),
        }
        return await unless_one_dies(_measure(paths, args, cpu_meter(procs)), procs)
