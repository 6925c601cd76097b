"""`ollamesh bench --backend URL`: the spine's figures against any host, a real engine
included: streamed chats straight to the host against the same chats through ollamesh,
in one run.

`URL` is an `OLLAMA_HOSTS` entry: `http://gpu-1:11434` (Ollama) or
`openai+http://gpu-3:8080` (an OpenAI-compatible engine such as llama-server). Starts
nats-server, and an executor and a router each in a process of their own, serving that
host alone. Both paths ask the same chat of one user message with the same
`max_tokens` / `num_predict` and no seed, so the answer cache leaves them alone:

- `direct`: POST /v1/chat/completions (SSE) or /api/chat (NDJSON) to the host;
- `ollamesh`: the same chat through the Python SDK over NATS.

Time to first token at concurrency 1 (p50, p99, and what ollamesh adds); requests/s at
the engine's own slot count (llama.cpp's `/props`, else 4) and at twice that, each with
its ratio to direct's from the same run.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import httpx
import msgspec

from actors.cli.bench.harness import (
    BenchError,
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
    openai_call,
    progress,
    through_sdk,
    unless_one_dies,
    wait_for,
)
from bus.client import Client
from bus.config import split_kind
from bus.server import EmbeddedNats
from bus.subjects import canonical_model

__all__ = ["backend_bench"]

_READY_S = 30.0
_CALL_TIMEOUT_S = 120.0
# Slots assumed when the engine does not say (Ollama's default OLLAMA_NUM_PARALLEL).
_DEFAULT_SLOTS = 4


async def _discover(kind: str, url: str, model: str | None) -> tuple[str, int]:
    """The host's model to use (its own id) and its parallel slots."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
            if kind == "openai":
                ids = [m["id"] for m in (await http.get("/v1/models")).json()["data"]]
                props = await http.get("/props")
                slots = props.json().get("total_slots") if props.status_code == 200 else None
            else:
                ids = [m["name"] for m in (await http.get("/api/tags")).json()["models"]]
                slots = None
    except (httpx.HTTPError, msgspec.DecodeError, ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{url} does not answer as an {kind} host: {exc!r}") from exc
    if model is not None and model not in ids:
        raise BenchError(f"{url} has no model {model!r}; it has {', '.join(ids) or 'none'}")
    if not ids:
        raise BenchError(f"{url} lists no model")
    return model or ids[0], slots or _DEFAULT_SLOTS


def _compare(runs: dict[str, Run]) -> dict[str, Any]:
    d, o = runs["direct"], runs["ollamesh"]
    dt, ot = d.ttft_ms(), o.ttft_ms()
    return {
        "ttft_ms": {"direct": {k: fig(v) for k, v in dt.items()},
                    "ollamesh": {k: fig(v) for k, v in ot.items()},
                    "added_p50": fig(ot["p50"] - dt["p50"]),
                    "added_p99": fig(ot["p99"] - dt["p99"])},
        "requests_per_s": {"direct": fig(d.rate(), 2), "ollamesh": fig(o.rate(), 2),
                           "ratio": fig(div(o.rate(), d.rate()))},
        "errors": {"direct": d.errors, "ollamesh": o.errors},
    }  # fmt: skip


async def _measure(
    paths: dict[str, Call], requests: int, tokens: int, warmup: int, slots: int, procs: Any
) -> dict[str, Any]:
    cpu = cpu_meter(procs)
    scenarios = {
        f"c{conc}": await each_path(paths, f"c{conc}", requests, conc, tokens, warmup, cpu)
        for conc in (1, slots, 2 * slots)
    }
    return {
        "scenarios": {name: _compare(runs) for name, runs in scenarios.items()},
        "cpu_ms_per_request": cpu_by_scenario(scenarios),
    }


async def backend_bench(
    host: str, model: str | None, requests: int, tokens: int, warmup: int
) -> dict[str, Any]:
    """Direct calls to `host` against the same calls through ollamesh, with the parameters."""
    kind, url = split_kind(host)
    own, slots = await _discover(kind, url, model)
    name = canonical_model(own)  # the fleet's name for it, with no aliases configured
    prefix = f"backend{uuid.uuid4().hex[:8]}"
    async with (
        EmbeddedNats() as server,
        fleet(server.url, prefix, host=host) as (_, procs),
        contextlib.AsyncExitStack() as stack,
        Client(server.url, prefix=prefix, timeout=_CALL_TIMEOUT_S, name="bench-backend") as client,
    ):
        progress(f"nats {server.url}, {kind} host {url}, model {own}, {slots} slots")
        http = await one_connection_clients(stack, url, 2 * slots, _CALL_TIMEOUT_S)

        async def ready() -> None:
            await client.chat(name, [{"role": "user", "content": "ready?"}],
                              options={"num_predict": 1})  # fmt: skip

        await wait_for("ollamesh", ready, _READY_S, procs)
        direct = (
            openai_call(http, model=own)
            if kind == "openai"
            else ollama_call(http, chat=True, model=own)
        )
        paths = {"direct": direct, "ollamesh": through_sdk(client, chat=True, model=name)}
        measure = _measure(paths, requests, tokens, warmup, slots, procs)
        figures = await unless_one_dies(measure, procs)
    params = {"host": host, "kind": kind, "model": own, "slots": slots, "requests": requests,
              "tokens": tokens, "warmup": warmup}  # fmt: skip
    return {"params": params, **figures}
