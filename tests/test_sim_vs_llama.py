"""The simulator's `--api openai` against the real llama-server it imitates: the same
requests to both, and the shapes of what comes back compared (fields and their types,
the events' framing, the final usage), not the text. A llama-server release that changes
a shape fails here, and the simulator is brought back in line."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest

from tests._engine_fixtures import LlamaServer

MODEL = "tiny-llama"  # the fixture's alias: the simulator serves one model by that name
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
TEXT = {"model": MODEL, "prompt": "Once upon", "max_tokens": 5}
USAGE = {"stream": True, "stream_options": {"include_usage": True}}


def shape(value: Any) -> Any:
    """A value with every leaf replaced by its type, and a list by its first item's shape."""
    if isinstance(value, dict):
        return {key: shape(v) for key, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "null" if value is None else type(value).__name__


def events(body: str) -> list[Any]:
    """A stream's events, each as its shape, `[DONE]` as itself; a run of events of one
    shape (the tokens) as one."""
    out: list[Any] = []
    for line in body.splitlines():
        if not line:
            continue
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        payload = line[6:]
        event = "[DONE]" if payload == "[DONE]" else shape(msgspec.json.decode(payload))
        if not out or out[-1] != event:
            out.append(event)
    return out


def _within(sim: Any, real: Any, where: str = "$") -> list[str]:
    """Where `sim`'s shape is not a part of `real`'s (a field it lacks or types otherwise)."""
    if isinstance(sim, dict) and isinstance(real, dict):
        return [p for k, v in sim.items()
                for p in ([f"{where}.{k}: not in llama-server's"] if k not in real
                          else _within(v, real[k], f"{where}.{k}"))]  # fmt: skip
    if isinstance(sim, list) and isinstance(real, list) and sim and real:
        return _within(sim[0], real[0], f"{where}[0]")
    return [] if sim == real else [f"{where}: {sim} here, {real} in llama-server's"]


Ask = Callable[[httpx.Client], httpx.Response]

SAME = {
    "streamed chat with usage": lambda h: h.post("/v1/chat/completions", json=CHAT | USAGE),
    "streamed chat": lambda h: h.post("/v1/chat/completions", json=CHAT | {"stream": True}),
    "chat": lambda h: h.post("/v1/chat/completions", json=CHAT),
    "streamed completion with usage": lambda h: h.post("/v1/completions", json=TEXT | USAGE),
    "completion": lambda h: h.post("/v1/completions", json=TEXT),
    "health": lambda h: h.get("/health"),
    "bad request": lambda h: h.post("/v1/chat/completions", json={"model": MODEL, "messages": 1}),
}
# Routes where the simulator gives a part of what llama-server says.
PART = {
    "models": lambda h: h.get("/v1/models"),
    "props": lambda h: h.get("/props"),
    "idle slots": lambda h: h.get("/slots"),
}


def _answer(resp: httpx.Response) -> tuple[int, str, Any]:
    kind = resp.headers["content-type"].split(";")[0]
    body = events(resp.text) if kind == "text/event-stream" else shape(resp.json())
    return resp.status_code, kind, body


async def _both(sim: str, real: str, ask: Ask) -> tuple[Any, Any]:
    """`ask` of the simulator and of llama-server: each answer's status, type and shape."""

    def run() -> tuple[Any, Any]:
        with (
            httpx.Client(base_url=sim, timeout=10.0) as s,
            httpx.Client(base_url=real, timeout=10.0) as r,
        ):
            return _answer(ask(s)), _answer(ask(r))

    return await asyncio.to_thread(run)


@pytest.mark.parametrize("name", sorted(SAME))
async def test_the_simulator_answers_in_llama_servers_shape(
    name: str, llama_server: LlamaServer, sim_factory
) -> None:
    sim = await sim_factory(models=[MODEL], api="openai")
    simulated, real = await _both(sim.url, llama_server.url, SAME[name])
    assert simulated == real


@pytest.mark.parametrize("name", sorted(PART))
async def test_the_simulators_fields_are_llama_servers(
    name: str, llama_server: LlamaServer, sim_factory
) -> None:
    sim = await sim_factory(models=[MODEL], api="openai")
    simulated, real = await _both(sim.url, llama_server.url, PART[name])
    assert simulated[:2] == real[:2]  # status and content type
    assert _within(simulated[2], real[2]) == []
