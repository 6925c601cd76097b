"""`ollamesh demo`: a scripted tour on an embedded nats-server and two simulated hosts."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
from rich.console import Console

from actors.cli.fleet import status_table
from actors.runtime.supervisor import Stack
from actors.simulator import SimulatorServer
from bus.client import Client
from bus.config import Config
from bus.errors import Cancelled
from schemas import StatsRow
from schemas.fleet import FleetStatus, HostState, PullProgress
from schemas.internal import RequestEvent, decode_event

__all__ = ["demo"]

_MODELS = ["llama3.2:3b", "qwen2.5:7b"]
# Pulls download at 8 GB/s: a 4 GB model arrives in half a second.
_DISK = {"pull_bytes_per_second": 8e9}


def _say(text: str = "") -> None:
    print(text, flush=True)


@contextlib.asynccontextmanager
async def _fleet(tokens_per_second: float) -> AsyncIterator[list[SimulatorServer]]:
    async with (
        SimulatorServer(models=_MODELS, tokens_per_second=tokens_per_second, **_DISK) as a,
        SimulatorServer(models=_MODELS, tokens_per_second=tokens_per_second, **_DISK) as b,
    ):
        yield [a, b]


@contextlib.asynccontextmanager
async def _scratch() -> AsyncIterator[Path]:
    """A directory for the demo's Postgres, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="ollamesh-demo-") as tmp:
        yield Path(tmp)


async def _recorded(client: Client, expected: int, timeout: float = 10.0) -> list[StatsRow]:
    """The last minute's rows per model, once the recorder has written `expected`."""
    rows: list[StatsRow] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while sum(r.requests for r in rows) < expected:
                await asyncio.sleep(0.2)  # the recorder writes in batches, about each second
                rows = [r for r in (await client.stats()).windows["1m"] if r.model]
    return rows


async def _fleet_view(client: Client, dead: str, timeout: float = 10.0) -> FleetStatus:
    """The monitor's view once it has seen the dead host down (its executor tells it)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                fleet = await client.fleet.status()
                if any(h.host == dead and h.state is HostState.DOWN for h in fleet.hosts):
                    return fleet
                await asyncio.sleep(0.2)
    return await client.fleet.status()


async def demo(tokens_per_second: float = 150.0) -> int:
    """Run the tour; return 0 when every step behaved as it should."""
    async with _fleet(tokens_per_second) as (gpu_a, gpu_b):
        config = msgspec.convert(
            {
                "ollama_hosts": [gpu_a.url, gpu_b.url],
                "roles": {"primary": "qwen2.5:7b", "fast": "llama3.2:3b", "backup": "llama3.2:3b"},
                "nats": {"port": 0},
                # Ctrl-C mid-tour: what is in flight is dropped, not waited for.
                "executor": {
                    "retry_backoff_ms": 50,
                    "tags_refresh_s": 1.0,
                    "shutdown_grace_s": 0.1,
                },
                "metrics": {"port": None},
                "gateway": {"port": 0},
            },
            Config,
        )
        async with (
            _scratch() as db_dir,
            Stack(config, db_dir=db_dir) as stack,
            Client(stack.url, timeout=30.0) as client,
        ):
            names = {gpu_a.url: "gpu-a", gpu_b.url: "gpu-b"}
            events: list[RequestEvent] = []

            async def on_event(msg: object) -> None:
                events.append(decode_event(msg.data))  # type: ignore[attr-defined]

            await client.nc.subscribe(stack.subjects.event("request"), cb=on_event)
            _say(f"ollamesh demo: nats-server at {stack.url}, hosts gpu-a and gpu-b")
            _say(f"  gpu-a {gpu_a.url}   gpu-b {gpu_b.url}   models {', '.join(_MODELS)}")
            summary: list[tuple[str, str]] = []

            _say("\n1. A streamed chat answer from the `primary` role, token by token:")
            t0 = time.perf_counter()
            stream = await client.chat(
                "primary",
                [{"role": "user", "content": "Name three checks for a scaffold."}],
                stream=True,
                options={"seed": 1, "num_predict": 40},
            )
            first = None
            sys.stdout.write("   ")
            async for chunk in stream:
                first = first or time.perf_counter() - t0
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
            done = stream.done
            assert done is not None
            _say(
                f"\n   -> {done.eval_count} tokens from {done.model} on"
                f" {names[done.host]}, first token after {first * 1000:.1f} ms"
            )
            summary.append(("streamed answer", f"{done.eval_count} tokens via {names[done.host]}"))

            _say("\n2. A non-streamed generate on the `fast` role:")
            result = await client.generate(
                "fast", "Say hello to the site crew.", options={"temperature": 0, "num_predict": 12}
            )
            _say(f"   {result.response.strip()}")
            _say(f"   -> served by {names[result.host]} ({result.eval_count} tokens)")
            summary.append(
                ("non-streamed answer", f"{result.eval_count} tokens via {names[result.host]}")
            )

            _say("\n3. gpu-a dies; the next requests move to gpu-b:")
            await gpu_a.kill()
            hosts = []
            for i in range(6):
                r = await client.generate("fast", f"Status report {i}", options={"num_predict": 8})
                hosts.append(names[r.host])
            retried = [e for e in events if e.attempt > 1 and e.outcome == "ok"]
            _say(f"   6 requests after the failure were served by: {', '.join(hosts)}")
            _say(f"   {len(retried)} of them had reached gpu-a first and were retried on gpu-b")
            ok = all(h == "gpu-b" for h in hosts)
            summary.append(("failover", "all on gpu-b" if ok else f"served by {hosts}"))

            _say("\n4. A long answer, cancelled after five chunks:")
            stream = await client.generate(
                "fast", "Write the full site safety manual.", stream=True,
                options={"num_predict": 5000},
            )  # fmt: skip
            t0 = time.perf_counter()
            seen = 0
            outcome = "not cancelled"
            try:
                async for _ in stream:
                    seen += 1
                    if seen == 5:
                        await stream.cancel()
            except Cancelled:
                outcome = (
                    f"cancelled after {seen} chunks in {(time.perf_counter() - t0) * 1000:.0f} ms"
                )
            _say(f"   -> {outcome}")
            summary.append(("cancel", outcome))

            _say("\n5. Every request was recorded in Postgres; `llm.v1.stats` reads it back:")
            expected = len(events)
            recorded = await _recorded(client, expected)
            for row in recorded:
                _say(
                    f"   {row.model:<12} {row.requests} requests, {row.success_rate:.0%} ok,"
                    f" p50 {row.latency_ms_p50:.1f} ms"
                )
            total = sum(r.requests for r in recorded)
            summary.append(("stats", f"{total} requests recorded"))

            _say("\n6. The fleet from one screen (`ollamesh status`), then a model pulled")
            _say("   onto every host that is up, with progress (`ollamesh models pull`):")
            fleet = await _fleet_view(client, gpu_a.url)
            Console(width=110).print(status_table(fleet, None))
            progress: list[PullProgress] = []
            t0 = time.perf_counter()
            pulled = await client.fleet.pull("mistral:7b", on_progress=progress.append)
            took = (time.perf_counter() - t0) * 1000
            where = ", ".join(names[r.host] for r in pulled.results if r.ok)
            _say(f"   -> mistral:7b pulled onto {where} in {took:.0f} ms"
                 f" ({len(progress)} progress events)")  # fmt: skip
            down = [names[h.host] for h in fleet.hosts if h.state is HostState.DOWN]
            summary.append(
                ("fleet view", f"{', '.join(down) or 'no host'} down; pulled on {where}")
            )

            _say("\n7. HTTP clients reach the same fleet through the gateway:")
            http_ok = await _through_gateway(stack)
            summary.append(("http gateway", "Ollama and OpenAI routes answered" if http_ok
                            else "FAILED"))  # fmt: skip

            _say("\nSummary")
            for step, what in summary:
                _say(f"  {step:<22} {what}")
            passed = ok and outcome.startswith("cancelled") and total >= expected
            passed = passed and down == ["gpu-a"] and where == "gpu-b" and http_ok
            _say("\ndemo " + ("passed" if passed else "FAILED"))
            await asyncio.sleep(0)
            return 0 if passed else 1


async def _through_gateway(stack: Stack) -> bool:
    """One chat on Ollama's route and one on OpenAI's, as unchanged clients send them."""
    assert stack.gateway is not None
    url = stack.gateway.url
    question = [{"role": "user", "content": "Is the crane inspected?"}]
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        native = await http.post("/api/chat", json={"model": "fast", "messages": question,
                                 "stream": False, "options": {"num_predict": 8}})  # fmt: skip
        compat = await http.post("/v1/chat/completions", json={"model": "primary",
                                 "messages": question, "max_tokens": 8})  # fmt: skip
    if native.status_code != 200 or compat.status_code != 200:
        _say(f"   -> {native.status_code} {native.text[:120]} / {compat.status_code}"
             f" {compat.text[:120]}")  # fmt: skip
        return False
    _say(f"   POST {url}/api/chat            -> {native.json()['message']['content'].strip()}")
    reply = compat.json()["choices"][0]["message"]["content"]
    _say(f"   POST {url}/v1/chat/completions -> {reply.strip()}")
    return True
