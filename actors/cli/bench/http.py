"""`ollamesh bench --http`: streamed chats straight to the simulator against the same
chats through the HTTP gateway, on Ollama's route and OpenAI's, in one run.

Starts nats-server, the simulator at full speed, and an executor, a router and a gateway
each in a process of its own (the gateway as `ollamesh up --actors gateway` runs it: a
client of the fleet like any other). Every path asks the same chat of one user message
with the same `num_predict`, and neither a seed nor a temperature, so the answer cache
leaves them alone:

- `direct`: POST /api/chat to the simulator;
- `nats`: the same chat through the Python SDK over NATS, the path the gateway itself
  takes, so a gateway route's figure less this one is the gateway's own share;
- `gateway_ollama`: POST /api/chat to the gateway, NDJSON as from Ollama;
- `gateway_openai`: POST /v1/chat/completions with `stream: true` to the gateway, read
  as server-sent events.

Time to first token is until the first line (or event) with content arrives: its p50
and p99 at concurrency 1; requests/s for a fixed number of requests at concurrency 32
and 64, each route's ratio to direct's from the same run.

The load generator is this process alone: every server is a child process, so the
clients share no event loop with what they measure (only the machine's cores), and their
CPU is a figure of its own (`client` in `cpu_ms_per_request`, beside each child's and
nats-server's; Linux only). Each concurrent call borrows an httpx client of one
connection, as `ollamesh bench` does: one shared client of 64 connections (httpcore
scans its pool on every request) cost the client about twice the CPU per request at
concurrency 32 and 64, and halved the direct rate.
"""

from __future__ import annotations

import contextlib
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
    free_port,
    ollama_call,
    one_connection_clients,
    openai_call,
    progress,
    through_sdk,
    unless_one_dies,
    wait_for,
)
from bus.client import Client
from bus.server import EmbeddedNats

__all__ = ["http_bench"]

_CONNECTIONS = 64
_READY_S = 20.0
_CALL_TIMEOUT_S = 60.0
_ROUTES = ("gateway_ollama", "gateway_openai")
_TARGETS = {"added_ttft_p50_ms_max": 2.5, "requests_per_s_ratio_c32_min": 0.5}


# -- the report --------------------------------------------------------------------------


def _ttft(runs: dict[str, Run]) -> dict[str, Any]:
    stats = {path: run.ttft_ms() for path, run in runs.items()}
    d, nats = stats["direct"], stats["nats"]
    added = {
        path: {q: fig(s[q] - d[q]) for q in ("p50", "p99")}
        for path, s in stats.items()
        if path != "direct"
    }
    own = {p: fig(stats[p]["p50"] - nats["p50"]) for p in _ROUTES}
    return {
        **{path: {k: fig(v) for k, v in s.items()} for path, s in stats.items()},
        "added": added,
        "gateway_over_nats_p50": own,
        "errors": {path: r.errors for path, r in runs.items()},
    }


def _rate(runs: dict[str, Run]) -> dict[str, Any]:
    rates = {path: run.rate() for path, run in runs.items()}
    d = rates["direct"]
    return {
        **{path: fig(r, 1) for path, r in rates.items()},
        "ratio": {path: fig(div(r, d)) for path, r in rates.items() if path != "direct"},
        "errors": {path: r.errors for path, r in runs.items()},
    }


def _targets(ttft_c1: dict[str, Any], rate_c32: dict[str, Any]) -> dict[str, Any]:
    met = {}
    for route in _ROUTES:
        added, ratio = ttft_c1["added"][route]["p50"], rate_c32["ratio"][route]
        met[route] = {
            "added_ttft_p50": added is not None and added <= _TARGETS["added_ttft_p50_ms_max"],
            "requests_per_s_c32": ratio is not None
            and ratio >= _TARGETS["requests_per_s_ratio_c32_min"],
        }
    return _TARGETS | {"met": met}


async def _measure(
    paths: dict[str, Call], requests: int, tokens: int, warmup: int, cpu: CpuMeter
) -> dict[str, Any]:
    """Run every scenario on every path; return the report's figures."""
    scenarios = {
        f"c{conc}": await each_path(paths, f"c{conc}", requests, conc, tokens, warmup, cpu)
        for conc in (1, 32, 64)
    }
    ttft = _ttft(scenarios["c1"])
    rates = {name: _rate(scenarios[name]) for name in ("c32", "c64")}
    return {
        "ttft_ms": {"c1": ttft},
        "requests_per_s": rates,
        "cpu_ms_per_request": cpu_by_scenario(scenarios),
        "targets": _targets(ttft, rates["c32"]),
    }


async def http_bench(requests: int, tokens: int, warmup: int) -> dict[str, Any]:
    """The gateway's figures against direct calls, with the parameters they were measured with."""
    prefix = f"http{uuid.uuid4().hex[:8]}"
    port = free_port()
    gateway = f"[gateway]\nport = {port}\n"
    async with (
        EmbeddedNats() as server,
        fleet(server.url, prefix, stores="gateway", config_extra=gateway) as (sim_url, procs),
        contextlib.AsyncExitStack() as stack,
        Client(server.url, prefix=prefix, timeout=_CALL_TIMEOUT_S, name="bench-http") as client,
    ):
        gateway_url = f"http://127.0.0.1:{port}"
        progress(f"nats {server.url}, simulator {sim_url}, gateway {gateway_url}, prefix {prefix}")
        sim = await one_connection_clients(stack, sim_url, _CONNECTIONS, _CALL_TIMEOUT_S)
        gw = await one_connection_clients(stack, gateway_url, _CONNECTIONS, _CALL_TIMEOUT_S)

        async def ready() -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "ready?"}],
                    "stream": False, "options": {"num_predict": 1}}  # fmt: skip
            (await gw[0].post("/api/chat", json=body)).raise_for_status()

        await wait_for("the gateway", ready, _READY_S, procs)
        paths = {
            "direct": ollama_call(sim, chat=True),
            "nats": through_sdk(client, chat=True),
            "gateway_ollama": ollama_call(gw, chat=True),
            "gateway_openai": openai_call(gw),
        }
        measure = _measure(paths, requests, tokens, warmup, cpu_meter(procs))
        figures = await unless_one_dies(measure, procs)
    params = {"requests": requests, "tokens": tokens, "warmup": warmup, "model": MODEL}
    return {"params": params, "paths": list(paths), **figures}
