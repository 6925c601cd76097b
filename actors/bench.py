"""`ollamesh bench`: time to first token and throughput, direct to Ollama vs through ollamesh.

Starts nats-server, the simulator at full speed, one router and one executor process; sends
the same requests to the simulator over httpx and through ollamesh; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from actors.processes import stop_processes
from bus.client import Client
from bus.errors import OllameshError
from bus.server import EmbeddedNats, NatsServerError, find_nats_server

__all__ = ["MODEL", "bench", "fleet", "percentile", "progress", "register", "wait_for"]

MODEL = "bench:1b"
_SEED = 42
_STREAMS = 64
_SIM_READY_S = 15.0
_OLLAMESH_READY_S = 20.0
_CALL_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0
_TARGETS = {"added_ttft_p50_ms_max": 2, "added_ttft_p99_ms_max": 6, "requests_per_s_min": 500}
# The executor's in-flight cap must not be what the bench measures.
_CONFIG = (
    'log_level = "warning"\n[executor]\nmax_inflight_per_model = 64\nshutdown_grace_s = 2.0\n'
    "[metrics]\nport = 0\n"  # several processes on one machine: any free port each
)


class BenchError(RuntimeError):
    """The bench could not set up or run a scenario."""


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
Procs = dict[str, asyncio.subprocess.Process]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bench` subcommand."""
    p = subparsers.add_parser("bench", help="measure ollamesh against direct calls; print JSON")
    p.add_argument("--requests", type=int, default=400, help="requests per measured scenario")
    p.add_argument("--tokens", type=int, default=16, help="num_predict of each request")
    p.add_argument("--stream-tokens", type=int, default=512, help="num_predict of the 64 streams")
    p.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each")
    f = p.add_argument_group("host strategies on a skewed fleet (instead of the above)")
    f.add_argument("--fleet", action="store_true", help="compare the host strategies")
    f.add_argument("--fleet-requests", type=int, default=256, help="requests per strategy")
    f.add_argument("--fleet-tokens", type=int, default=32, help="num_predict of each request")
    f.add_argument("--fleet-streams", type=int, default=64, help="concurrent streams")
    c = p.add_argument_group("the answer cache (instead of the above)")
    c.add_argument("--cache", action="store_true", help="cache hits and single-flight")
    c.add_argument("--cache-requests", type=int, default=400, help="requests per figure")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the bench on uvloop with quiet logs; return the exit code."""
    from actors.cli import run_async
    from actors.logs import configure_logging

    configure_logging("warning", "json")
    return run_async(lambda: bench(args))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default); NaN if none."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def progress(text: str) -> None:
    """One line of progress on stderr (stdout carries the report only)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Have Linux stop the child when the bench dies without cleaning up (SIGKILL)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _spawn(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "actors", *argv,
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )  # fmt: skip


async def wait_for(
    what: str, probe: Callable[[], Awaitable[object]], timeout: float, procs: Procs
) -> None:
    """Retry `probe` until it succeeds; fail after `timeout` or as soon as a child exits."""
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in procs.items():
            if proc.returncode is not None:
                raise BenchError(f"the {name} process exited with {proc.returncode} (see stderr)")
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await probe()
            return
        except (OllameshError, httpx.HTTPError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise BenchError(f"{what} was not ready within {timeout:.0f}s: {exc!r}") from exc
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def fleet(
    nats_url: str, prefix: str, *, stores: str = "", env_extra: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, Procs]]:
    """Run the simulator, one executor and one router (and, with `stores`, a process of
    those actors, e.g. "cache"); yield the simulator's URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim_url = f"http://127.0.0.1:{port}"
    procs: Procs = {}
    with tempfile.TemporaryDirectory(prefix="ollamesh-bench-") as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(_CONFIG)
        env = os.environ | {
            "NATS_URL": nats_url,
            "OLLAMA_HOSTS": sim_url,
            "OLLAMESH_PREFIX": prefix,
            "OLLAMESH_CONFIG": str(config),
            **(env_extra or {}),
        }
        try:
            procs["simulator"] = await _spawn(
                ["sim", "--port", str(port), "--models", MODEL, "--tokens-per-second", "0",
                 "--num-parallel", "256", "--max-queue", "8192"], env,
            )  # fmt: skip
            async with httpx.AsyncClient(base_url=sim_url, timeout=1.0) as http:

                async def version() -> None:
                    (await http.get("/api/version")).raise_for_status()

                await wait_for("the simulator", version, _SIM_READY_S, procs)
            procs["executor"] = await _spawn(["up", "--actors", "executor"], env)
            procs["router"] = await _spawn(["up", "--actors", "router"], env)
            if stores:
                procs[stores] = await _spawn(["up", "--actors", stores], env)
            yield sim_url, procs
        finally:
            await stop_processes(procs.values(), _STOP_TIMEOUT_S)


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


def _machine() -> dict[str, Any]:
    try:
        out = subprocess.run([find_nats_server(), "--version"], capture_output=True, timeout=5)
        nats_server = out.stdout.decode(errors="replace").strip().removeprefix("nats-server: ")
    except (OSError, subprocess.SubprocessError, RuntimeError):
        nats_server = "unknown"
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "nats_server": nats_server,
    }


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


async def bench(args: argparse.Namespace) -> int:
    """Start the fleet, run every scenario, print one JSON object on stdout."""
    sizes = (args.fleet_requests, args.fleet_tokens, args.fleet_streams, args.cache_requests)
    if min(args.requests, args.tokens, args.stream_tokens, *sizes) < 1 or args.warmup < 0:
        print("error: request counts, token counts and streams must be positive", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C does, so every child is stopped and temp files removed.
    main, terminated = asyncio.current_task(), asyncio.Event()
    assert main is not None

    def on_sigterm() -> None:
        terminated.set()
        main.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        if args.cache:
            from actors.bench_cache import cache_bench

            figures = await cache_bench(args.cache_requests)
            print(json.dumps({"machine": _machine(), **figures}, indent=2))
            return 0
        if args.fleet:
            from actors.bench_fleet import fleet_bench

            fleet = await fleet_bench(args.fleet_requests, args.fleet_tokens, args.fleet_streams)
            print(json.dumps({"machine": _machine(), **fleet}, indent=2))
            return 0
        figures = await _session(args)
    except (BenchError, NatsServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise
        main.uncancel()
        print("error: terminated", file=sys.stderr)
        return 143
    params = {k: getattr(args, k) for k in ("requests", "tokens", "stream_tokens", "warmup")}
    report = {"params": params | {"model": MODEL, "seed": _SEED}, "machine": _machine(), **figures}
    print(json.dumps(report, indent=2))
    return 0


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
        return await _unless_one_dies(measure, procs)


async def _unless_one_dies(work: Awaitable[dict[str, Any]], procs: Procs) -> dict[str, Any]:
    """Await `work`, but stop it with `BenchError` as soon as a child process exits."""
    task = asyncio.ensure_future(work)
    exits = [asyncio.ensure_future(proc.wait()) for proc in procs.values()]
    try:
        await asyncio.wait({task, *exits}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in exits:
            fut.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if not task.cancelled():
        return task.result()
    name, code = next((n, p.returncode) for n, p in procs.items() if p.returncode is not None)
    raise BenchError(f"the {name} process exited with {code} during the run (see stderr)")
