"""What every bench shares: the fleet of processes under test, waiting for readiness,
percentiles, progress, the machine's description. Imports no command, so the benches and
the `bench` command can import it without a cycle."""

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
from pathlib import Path
from typing import Any

import httpx

from actors.runtime.processes import stop_processes
from actors.store import EmbeddedPostgres
from bus.errors import OllameshError
from bus.server import EmbeddedNats, find_nats_server

__all__ = [
    "MODEL",
    "BenchError",
    "Procs",
    "fleet",
    "fleet_with_database",
    "machine",
    "p50_p99",
    "percentile",
    "progress",
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
) -> AsyncIterator[tuple[str, Procs]]:
    """Run the simulator, one executor and one router (and, with `stores`, a process of
    those actors, e.g. "cache"), configured with `config_extra` (TOML) too; yield the
    simulator's URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim_url = f"http://127.0.0.1:{port}"
    procs: Procs = {}
    with tempfile.TemporaryDirectory(prefix="ollamesh-bench-") as tmp:
        config = Path(tmp) / "bench.toml"
        config.write_text(_CONFIG + config_extra)
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
