"""The spine bench: time to first token and throughput, direct to Ollama vs through ollamesh.

Starts nats-server, the simulator at full speed, one router and one executor process, and
sends the same requests to the simulator over httpx and through ollamesh.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from actors.cli.bench.harness import (
    MODEL,
    BenchError,
    fleet,
    percentile,
    progress,
    unless_one_dies,
    wait_for,
)
from bus.client import Client
from bus.errors import OllameshError
from bus.server import EmbeddedNats

__all__ = ["spine_bench"]

_SEED = 42
_STREAMS = 64
_OLLAMESH_READY_S = 20.0
_CALL_TIMEOUT_S = 60.0
_TARGETS = {"added_ttft_p50_ms_max": 2, "added_ttft_p99_ms_max": 6, "requests_per_s_min": 500}


class _Line(msgspec.Struct):
    """What the direct client reads of one Ollama NDJSON line."""

    response: str = ""
    done: bool = False
    error: str | None = None


_decode_line = msgspec.json.Decoder(_Line).decode


@dataclass(slots=True)
class Outcome:
    """One call streamed to its end: seconds to the first token, tokens, chunks."""

    ttft: float
    tokens: int
    chunks: int


@dataclass(slots=True)
class Run:
    """One scenario on one path: what each call gave, failures, wall time."""

    outcomes: list[Outcome] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0


# A call streams one answer to a prompt with a given num_predict.
Call = Callable[[str, int], Awaitable[Outcome]]


# -- the two paths -----------------------------------------------------------------------


def _direct(clients: list[httpx.AsyncClient]) -> Call:
    """A call straight to the simulator, read line by line as a careful client would.

    Each call borrows a client of one connection: httpcore scans its whole pool twice per
    request, and with 64 pooled connections the baseline would measure that, not the host.
    """

    async def call(prompt: str, tokens: int) -> Outcome:
        http = clients.pop()
        try:
            return await _stream_direct(http, prompt, tokens)
        finally:
            clients.append(http)

    return call


async def _stream_direct(http: httpx.AsyncClient, prompt: str, tokens: int) -> Outcome:
    options = {"seed": _SEED, "num_predict": tokens}
    body = msgspec.json.encode({"model": MODEL, "prompt": prompt, "options": options})
    t0 = time.perf_counter()
    first, count, reads, done, pending = 0.0, 0, 0, False, b""
    async with http.stream("POST", "/api/generate", content=body) as resp:
        if resp.status_code != 200:
            raise BenchError(f"the simulator answered {resp.status_code}")
        async for raw in resp.aiter_raw():
            reads += 1
            *lines, pending = (pending + raw).split(b"\n")
            for line in map(_decode_line, filter(None, lines)):
                if line.error:
                    raise BenchError(f"the simulator failed: {line.error}")
                if line.done:
                    done = True
                    continue
                count += 1  # one NDJSON line per token
                if line.response and not first:
                    first = time.perf_counter() - t0
    if not done:
        raise BenchError("the simulator's stream ended without done: true")
    return Outcome(first, count, reads)  # chunks: socket reads


def _through(client: Client) -> Call:
    """The same call through ollamesh, streamed with the SDK."""

    async def call(prompt: str, tokens: int) -> Outcome:
        options = {"seed": _SEED, "num_predict": tokens}
        t0 = time.perf_counter()
        first, chunks = 0.0, 0
        # The spine alone: `ollamesh bench --cache` measures the cache's misses and hits.
        answer = client.generate(MODEL, prompt, stream=True, options=options, cache="off")
        async with await answer as stream:
            async for chunk in stream:
                chunks += 1
                if chunk.text and not first:
                    first = time.perf_counter() - t0
        return Outcome(first, stream.done.eval_count if stream.done else 0, chunks)

    return call


async def _pool(call: Call, name: str, n: int, concurrency: int, tokens: int) -> Run:
    """Make `n` calls (distinct prompts) on `concurrency` workers calling back to back."""
    result, todo = Run(), iter(range(n))

    async def worker() -> None:
        for i in todo:
            try:
                result.outcomes.append(await call(f"{name} question {i}: tell me more", tokens))
            except (OllameshError, BenchError, httpx.HTTPError) as exc:
                result.errors += 1
                if result.errors == 1:
                    progress(f"{name}: first error: {exc!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    result.elapsed = time.perf_counter() - t0
    return result


async def _both(
    paths: dict[str, Call], name: str, n: int, conc: int, tokens: int, warmup: int
) -> dict[str, Run]:
    """Run one scenario on each path in turn, each after `warmup` unmeasured calls."""
    runs = {}
    for path, call in paths.items():
        await _pool(call, f"{name} warmup", warmup, conc, tokens)
        runs[path] = r = await _pool(call, name, n, conc, tokens)
        progress(f"{name} {path}: {len(r.outcomes)} ok, {r.errors} failed in {r.elapsed:.2f}s")
    return runs


# -- the report --------------------------------------------------------------------------


def _fig(value: float, digits: int = 3) -> float | None:
    """A figure rounded for the report; None when there is none (NaN, inf)."""
    return round(value, digits) if math.isfinite(value) else None


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _errors(runs: dict[str, Run]) -> dict[str, int]:
    return {path: r.errors for path, r in runs.items()}


def _ttft(runs: dict[str, Run]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, run in runs.items():
        ms = [x.ttft * 1000 for x in run.outcomes if x.ttft]
        out[path] = {
            "p50": percentile(ms, 50),
            "p99": percentile(ms, 99),
            "mean": _div(sum(ms), len(ms)),
        }
    d, o = out["direct"], out["ollamesh"]
    added = {"added_p50": _fig(o["p50"] - d["p50"]), "added_p99": _fig(o["p99"] - d["p99"])}
    rounded = {path: {k: _fig(v) for k, v in out[path].items()} for path in runs}
    return rounded | added | {"errors": _errors(runs)}


def _rate(runs: dict[str, Run]) -> dict[str, Any]:
    d, o = (_div(len(runs[p].outcomes), runs[p].elapsed) for p in ("direct", "ollamesh"))
    return {"direct": _fig(d, 1), "ollamesh": _fig(o, 1), "ratio": _fig(_div(o, d))}


def _streams(runs: dict[str, Run], tokens: int) -> dict[str, Any]:
    d, o = runs["direct"], runs["ollamesh"]
    d_rate = _div(sum(x.tokens for x in d.outcomes), d.elapsed)
    o_tokens, o_chunks = sum(x.tokens for x in o.outcomes), sum(x.chunks for x in o.outcomes)
    o_rate = _div(o_tokens, o.elapsed)
    return {
        "streams": _STREAMS,
        "num_predict": tokens,
        "direct": {"tokens_per_s": _fig(d_rate, 1)},
        "ollamesh": {
            "tokens_per_s": _fig(o_rate, 1),
            "chunks_per_s": _fig(_div(o_chunks, o.elapsed), 1),
            "tokens_per_chunk": _fig(_div(o_tokens, o_chunks), 2),
        },
        "ratio": _fig(_div(o_rate, d_rate)),
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


async def _measure(paths: dict[str, Call], args: argparse.Namespace) -> dict[str, Any]:
    """Run every scenario on both paths; return the report's figures."""
    n, tokens, warmup = args.requests, args.tokens, args.warmup
    c1 = await _both(paths, "c1", n, 1, tokens, warmup)
    c32 = await _both(paths, "c32", n, 32, tokens, warmup)
    c64 = await _both(paths, "c64", n, 64, tokens, warmup)
    streams = await _both(paths, "stream", _STREAMS, _STREAMS, args.stream_tokens, 0)
    ttft = {"c1": _ttft(c1), "c32": _ttft(c32)}
    rates = {"c32": _rate(c32), "c64": _rate(c64)}
    return {
        "ttft_ms": ttft,
        "requests_per_s": rates,
        f"stream_{_STREAMS}": _streams(streams, args.stream_tokens),
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
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with (
        EmbeddedNats() as server,
        fleet(server.url, prefix) as (sim_url, procs),
        contextlib.AsyncExitStack() as stack,
        Client(server.url, prefix=prefix, timeout=_CALL_TIMEOUT_S, name="bench") as client,
    ):
        progress(f"nats {server.url}, simulator {sim_url}, prefix {prefix}")
        http = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=sim_url, timeout=_CALL_TIMEOUT_S, limits=limits)
            )
            for _ in range(_STREAMS)
        ]

        async def one() -> None:
            await client.generate(MODEL, "ready?", options={"num_predict": 1, "seed": _SEED})

        await wait_for("ollamesh", one, _OLLAMESH_READY_S, procs)
        measure = _measure({"direct": _direct(http), "ollamesh": _through(client)}, args)
        return await unless_one_dies(measure, procs)
