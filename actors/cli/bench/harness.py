"""What every bench shares: the fleet of processes under test, waiting for readiness,
calls on a path and scenarios of them (with each process's CPU per request), percentiles,
progress, the machine's description. Imports no command, so the benches and the `bench`
command can import it without a cycle."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from actors.cli.bench.cpu import CpuMeter
from actors.runtime.processes import stop_processes
from actors.store import EmbeddedPostgres
from bus.client import Client
from bus.errors import OllameshError
from bus.server import EmbeddedNats, find_nats_server

__all__ = [
    "MODEL",
    "BenchError",
    "Call",
    "Outcome",
    "Procs",
    "Run",
    "Streamed",
    "cpu_by_scenario",
    "cpu_meter",
    "div",
    "each_path",
    "fig",
    "fleet",
    "fleet_with_database",
    "free_port",
    "lent",
    "machine",
    "ollama_call",
    "one_connection_clients",
    "openai_call",
    "p50_p99",
    "percentile",
    "pool",
    "progress",
    "through_sdk",
    "unless_one_dies",
    "wait_for",
]

MODEL = "bench:1b"
_SIM_READY_S = 15.0
_STOP_TIMEOUT_S = 10.0
# The executor's in-flight cap must not be what the bench measures.
_CONFIG = (
    'log_level = "warning"\n[executor]\nmax_inflight_per_model = 64\nshutdown_grace_s = 2.0\n'
    "[metrics]\nport = 0\n"  # several processes on one machine: any free port each
)

Procs = dict[str, asyncio.subprocess.Process]


class BenchError(RuntimeError):
    """The bench could not set up or run a scenario."""


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default); NaN if none."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


def p50_p99(values: list[float], digits: int = 3) -> dict[str, float]:
    """The median and the 99th percentile of `values`, rounded to `digits`."""
    return {q: round(percentile(values, n), digits) for q, n in (("p50", 50), ("p99", 99))}


def fig(value: float, digits: int = 3) -> float | None:
    """A figure rounded for the report; None when there is none (NaN, inf)."""
    return round(value, digits) if math.isfinite(value) else None


def div(a: float, b: float) -> float:
    return a / b if b else math.nan


def free_port() -> int:
    """A TCP port free on loopback now (a child is told to listen on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def progress(text: str) -> None:
    """One line of progress on stderr (stdout carries the report only)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


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
    nats_url: str,
    prefix: str,
    *,
    stores: str = "",
    env_extra: dict[str, str] | None = None,
    config_extra: str = "",
    host: str | None = None,
) -> AsyncIterator[tuple[str, Procs]]:
    """Run the simulator, one executor and one router (and, with `stores`, a process of
    those actors, e.g. "cache" or "gateway"), configured with `config_extra` (TOML) too;
    yield the simulator's URL. With `host` (an `OLLAMA_HOSTS` entry), the executor serves
    that host instead, and no simulator runs."""
    port = free_port()
    sim_url = f"http://127.0.0.1:{port}"
    procs: Procs = {}
    with tempfile.TemporaryDirectory(prefix="ollamesh-bench-") as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(_CONFIG + config_extra)
        env = os.environ | {
            "NATS_URL": nats_url,
            "OLLAMA_HOSTS": host or sim_url,
            "OLLAMESH_PREFIX": prefix,
            "OLLAMESH_CONFIG": str(config),
            **(env_extra or {}),
        }
        try:
            if host is None:
                await _simulator(port, sim_url, env, procs)
            procs["executor"] = await _spawn(["up", "--actors", "executor"], env)
            procs["router"] = await _spawn(["up", "--actors", "router"], env)
            if stores:
                procs[stores] = await _spawn(["up", "--actors", stores], env)
            yield sim_url, procs
        finally:
            await stop_processes(procs.values(), _STOP_TIMEOUT_S)


async def _simulator(port: int, url: str, env: dict[str, str], procs: Procs) -> None:
    procs["simulator"] = await _spawn(
        ["sim", "--port", str(port), "--models", MODEL, "--tokens-per-second", "0",
         "--num-parallel", "256", "--max-queue", "8192"], env,
    )  # fmt: skip
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as http:

        async def version() -> None:
            (await http.get("/api/version")).raise_for_status()

        await wait_for("the simulator", version, _SIM_READY_S, procs)


@contextlib.asynccontextmanager
async def fleet_with_database(
    prefix: str, stores: str, *, config_extra: str = ""
) -> AsyncIterator[tuple[str, str, Procs]]:
    """A nats-server, an embedded Postgres and `fleet` with a process of `stores` using
    it; yield the NATS URL, the simulator's URL and the processes."""
    with tempfile.TemporaryDirectory(prefix="ollamesh-bench-pg-") as tmp:
        async with (
            EmbeddedNats() as server,
            EmbeddedPostgres(Path(tmp)) as pg,
            fleet(
                server.url, prefix, stores=stores, config_extra=config_extra,
                env_extra={"DATABASE_URL": pg.url()},
            ) as (sim_url, procs),
        ):  # fmt: skip
            yield server.url, sim_url, procs


def machine() -> dict[str, Any]:
    """The machine the figures come from."""
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


async def unless_one_dies(work: Awaitable[dict[str, Any]], procs: Procs) -> dict[str, Any]:
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


def cpu_meter(procs: Procs) -> CpuMeter:
    """CPU accounting of this process, each child in `procs` and the nats-server child."""
    return CpuMeter.of({name: proc.pid for name, proc in procs.items()})


# -- calls on a path, and scenarios of them ----------------------------------------------


@dataclass(slots=True)
class Outcome:
    """One call streamed to its end: seconds to the first token, tokens, chunks."""

    ttft: float
    tokens: int
    chunks: int


@dataclass(slots=True)
class Run:
    """One scenario on one path: what each call gave, failures, wall time, and each
    process's CPU ms per request (empty without a meter)."""

    outcomes: list[Outcome] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0
    cpu_ms: dict[str, float | None] = field(default_factory=dict)

    def ttft_ms(self) -> dict[str, float]:
        """Time to first token's p50, p99 and mean in ms (NaN when no call had one)."""
        ms = [x.ttft * 1000 for x in self.outcomes if x.ttft]
        return {"p50": percentile(ms, 50), "p99": percentile(ms, 99), "mean": div(sum(ms), len(ms))}

    def rate(self) -> float:
        """Calls completed per second."""
        return div(len(self.outcomes), self.elapsed)


# A call streams one answer to a prompt with a given num_predict.
Call = Callable[[str, int], Awaitable[Outcome]]


def cpu_by_scenario(scenarios: dict[str, dict[str, Run]]) -> dict[str, Any]:
    """Each scenario's CPU ms per request, by path, then by process."""
    return {name: {path: r.cpu_ms for path, r in runs.items()} for name, runs in scenarios.items()}


async def pool(call: Call, name: str, n: int, concurrency: int, tokens: int) -> Run:
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


async def each_path(
    paths: dict[str, Call],
    name: str,
    n: int,
    conc: int,
    tokens: int,
    warmup: int,
    cpu: CpuMeter | None = None,
) -> dict[str, Run]:
    """Run one scenario on each path in turn, each after `warmup` unmeasured calls; with
    `cpu`, each process's CPU per request of the measured calls."""
    runs = {}
    for path, call in paths.items():
        await pool(call, f"{name} warmup", warmup, conc, tokens)
        before = cpu.read() if cpu is not None else {}
        runs[path] = r = await pool(call, name, n, conc, tokens)
        if cpu is not None:
            r.cpu_ms = cpu.ms_per_request(before, n)
        progress(f"{name} {path}: {len(r.outcomes)} ok, {r.errors} failed in {r.elapsed:.2f}s")
    return runs


async def one_connection_clients(
    stack: contextlib.AsyncExitStack, base_url: str, n: int, timeout: float
) -> list[httpx.AsyncClient]:
    """`n` httpx clients of one connection each, closed with `stack`.

    A call borrows one (`lent`) rather than sharing one client of `n` connections:
    httpcore scans its whole pool twice per request, and with 64 pooled connections the
    figure would be that scan's, not the server's.
    """
    # Idle connections are closed before a server's own idle timeout (5 s: llama.cpp's,
    # httpx's) could close one as it is taken.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=2.0)
    return [
        await stack.enter_async_context(
            httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits)
        )
        for _ in range(n)
    ]


def lent(
    clients: list[httpx.AsyncClient],
    call: Callable[[httpx.AsyncClient, str, int], Awaitable[Outcome]],
) -> Call:
    """`call` on a client borrowed from `clients` for its length."""

    async def borrowing(prompt: str, tokens: int) -> Outcome:
        http = clients.pop()
        try:
            return await call(http, prompt, tokens)
        finally:
            clients.append(http)

    return borrowing


class _Message(msgspec.Struct):
    content: str = ""


class _Line(msgspec.Struct):
    """What a client reads of one Ollama NDJSON line (generate's or chat's)."""

    response: str = ""
    message: _Message | None = None
    done: bool = False
    error: str | None = None


_decode_line = msgspec.json.Decoder(_Line).decode


class Streamed:
    """A streamed POST's body line by line (NDJSON, or SSE's `data:` lines and blanks);
    `reads` counts the socket reads. A status other than 200 is a `BenchError`."""

    def __init__(self, http: httpx.AsyncClient, path: str, content: bytes) -> None:
        self._http, self._path, self._content = http, path, content
        self.reads = 0

    async def lines(self) -> AsyncIterator[bytes]:
        http, path, pending = self._http, self._path, b""
        request = http.build_request("POST", path, content=self._content)
        try:
            resp = await http.send(request, stream=True)
        except httpx.RemoteProtocolError:
            # A kept-alive connection the server closed as it was taken: once more on a
            # new one, as ollamesh's executor does.
            resp = await http.send(request, stream=True)
        async with contextlib.aclosing(resp):
            if resp.status_code != 200:
                raise BenchError(f"{http.base_url}{path} answered {resp.status_code}")
            async for raw in resp.aiter_raw():
                self.reads += 1
                *lines, pending = (pending + raw).split(b"\n")
                for line in lines:
                    yield line


def ollama_call(
    clients: list[httpx.AsyncClient],
    *,
    chat: bool = False,
    options: dict[str, Any] | None = None,
    model: str = MODEL,
) -> Call:
    """A streamed POST /api/generate (or /api/chat, the prompt as one user message) to the
    clients' server, read line by line as a careful client would; `options` beside
    num_predict."""
    path = "/api/chat" if chat else "/api/generate"

    def body(prompt: str, tokens: int) -> bytes:
        opts = (options or {}) | {"num_predict": tokens}
        asked: dict[str, Any] = {"model": model, "options": opts}
        if chat:
            asked["messages"] = [{"role": "user", "content": prompt}]
        else:
            asked["prompt"] = prompt
        return msgspec.json.encode(asked)

    async def call(http: httpx.AsyncClient, prompt: str, tokens: int) -> Outcome:
        content = body(prompt, tokens)
        t0 = time.perf_counter()
        first, count, done = 0.0, 0, False
        streamed = Streamed(http, path, content)
        async with contextlib.aclosing(streamed.lines()) as lines:
            async for raw in lines:
                if not raw:
                    continue
                line = _decode_line(raw)
                if line.error:
                    raise BenchError(f"{http.base_url} failed: {line.error}")
                if line.done:
                    done = True
                    continue
                count += 1  # one NDJSON line per token
                text = line.response or (line.message.content if line.message else "")
                if text and not first:
                    first = time.perf_counter() - t0
        if not done:
            raise BenchError(f"{http.base_url}'s stream ended without done: true")
        return Outcome(first, count, streamed.reads)  # chunks: socket reads

    return lent(clients, call)


_CHAT_COMPLETIONS = "/v1/chat/completions"


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None


class _Event(msgspec.Struct):
    """What a client reads of one OpenAI chat completion chunk (or error) event."""

    choices: list[_Choice] = []
    error: Any = None


_decode_event = msgspec.json.Decoder(_Event).decode


def openai_call(clients: list[httpx.AsyncClient], *, model: str = MODEL) -> Call:
    """A streamed POST /v1/chat/completions of one user message, read event by event
    until `data: [DONE]`."""

    async def call(http: httpx.AsyncClient, prompt: str, tokens: int) -> Outcome:
        content = msgspec.json.encode({
            "model": model, "messages": [{"role": "user", "content": prompt}],
            "stream": True, "max_tokens": tokens,
        })  # fmt: skip
        t0 = time.perf_counter()
        first, events, done = 0.0, 0, False
        streamed = Streamed(http, _CHAT_COMPLETIONS, content)
        async with contextlib.aclosing(streamed.lines()) as lines:
            async for line in lines:
                if not line.startswith(b"data:"):
                    continue  # the blank line ending an event, or a comment
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    continue
                event = _decode_event(data)
                if event.error is not None:
                    raise BenchError(f"{http.base_url}{_CHAT_COMPLETIONS} failed: {event.error}")
                events += 1
                if not first and any(c.delta and c.delta.content for c in event.choices):
                    first = time.perf_counter() - t0
        if not done:
            raise BenchError(f"{http.base_url}{_CHAT_COMPLETIONS}'s stream ended without [DONE]")
        return Outcome(first, events, streamed.reads)

    return lent(clients, call)


def through_sdk(
    client: Client,
    *,
    chat: bool = False,
    options: dict[str, Any] | None = None,
    model: str = MODEL,
    **fields: Any,
) -> Call:
    """The same call through ollamesh, streamed with the SDK (generate, or chat of one user
    message); `options` beside num_predict, `fields` of the request (e.g. cache)."""

    async def call(prompt: str, tokens: int) -> Outcome:
        opts = (options or {}) | {"num_predict": tokens}
        t0 = time.perf_counter()
        first, chunks = 0.0, 0
        if chat:
            messages = [{"role": "user", "content": prompt}]
            answer = client.chat(model, messages, stream=True, options=opts, **fields)
        else:
            answer = client.generate(model, prompt, stream=True, options=opts, **fields)
        async with await answer as stream:
            async for chunk in stream:
                chunks += 1
                if chunk.text and not first:
                    first = time.perf_counter() - t0
        return Outcome(first, stream.done.eval_count if stream.done else 0, chunks)

    return call
