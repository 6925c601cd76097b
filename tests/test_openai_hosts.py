"""OpenAI-compatible hosts in the fleet, on the simulator's llama-server-shaped API (`api=
"openai"`): the whole path through ollamesh, what clients see matching what the engine
says, a fleet of both kinds under one model name, failures before and after the first
token, and the monitor's view and verbs for such hosts."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.msg import Msg

from actors.simulator import Fault
from bus.client import ChunkStream, Client
from bus.errors import NotSupported, UpstreamError
from bus.subjects import Subjects, model_token
from schemas import ChatResult, GenerateResult
from schemas.fleet import HostState
from tests.helpers import eventually

GGUF = "tiny-q8_0.gguf"
MODEL = "tiny:latest"
ALIASES = {"models": {"aliases": {GGUF: "tiny"}}}
CHAT = [{"role": "user", "content": "Name a load-bearing wall material."}]
HEALTH = ("router", "executor", "health")


async def _direct(url: str, path: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Ask the engine itself, streamed with the usage: the text and the usage."""
    body = body | {"model": GGUF, "stream": True, "stream_options": {"include_usage": True}}
    text, usage = [], {}
    async with (
        httpx.AsyncClient(base_url=url, timeout=10.0) as http,
        http.stream("POST", path, json=body) as resp,
    ):
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = msgspec.json.decode(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
    return "".join(text), usage


async def test_a_streamed_chat_says_what_the_engine_says_with_its_token_counts(
    sim_factory, stack_factory, client: Client
) -> None:
    sim = await sim_factory(models=[GGUF], api="openai")
    await stack_factory([f"openai+{sim.url}"], **ALIASES)
    stream = await client.chat("tiny", CHAT, stream=True, options={"seed": 5, "num_predict": 12})
    chunks = [c async for c in stream]
    done = stream.done
    assert done is not None and done.host == sim.url and done.model == MODEL
    text, usage = await _direct(
        sim.url, "/v1/chat/completions", {"messages": CHAT, "seed": 5, "max_tokens": 12}
    )
    assert "".join(c.text for c in chunks) == text != ""
    assert (done.prompt_eval_count, done.eval_count) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert done.done_reason == "length" and done.total_duration > 0


async def test_generate_is_a_completion_and_embed_an_embedding(
    sim_factory, stack_factory, client: Client
) -> None:
    sim = await sim_factory(models=[GGUF], api="openai")
    await stack_factory([f"openai+{sim.url}"], **ALIASES)
    result = await client.generate("tiny", "Once", options={"seed": 1, "num_predict": 6})
    assert isinstance(result, GenerateResult)
    text, usage = await _direct(
        sim.url, "/v1/completions", {"prompt": "Once", "seed": 1, "max_tokens": 6}
    )
    assert result.response == text and result.eval_count == usage["completion_tokens"] == 6
    embedded = await client.embed("tiny", ["a", "b"])
    async with httpx.AsyncClient(base_url=sim.url) as http:
        direct = (
            await http.post("/v1/embeddings", json={"model": GGUF, "input": ["a", "b"]})
        ).json()
    assert embedded.embeddings == [d["embedding"] for d in direct["data"]]
    assert embedded.host == sim.url


async def test_tool_calls_and_json_schemas_go_both_ways(
    sim_factory, stack_factory, client: Client
) -> None:
    sim = await sim_factory(models=[GGUF], api="openai")
    await stack_factory([f"openai+{sim.url}"], **ALIASES)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]  # fmt: skip
    asked = [{"role": "user", "content": "Weather in Bonn?"}]
    called = await client.chat("tiny", asked, tools=tools)
    assert isinstance(called, ChatResult)
    calls = called.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"]
    assert isinstance(calls[0].function.arguments, dict)
    # The call and its result go back to the engine, as OpenAI's messages.
    history = [*asked, msgspec.to_builtins(called.message),
               {"role": "tool", "content": "12 C", "tool_name": "get_weather"}]  # fmt: skip
    answered = await client.chat("tiny", history, tools=tools)
    assert isinstance(answered, ChatResult) and answered.message.content
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    shaped = await client.chat("tiny", CHAT, format=schema, options={"num_predict": 64})
    assert isinstance(shaped, ChatResult)
    assert isinstance(msgspec.json.decode(shaped.message.content)["n"], int)


async def test_both_kinds_serve_one_model_name(sim_factory, stack_factory, client: Client) -> None:
    ollama = await sim_factory(models=[MODEL])
    openai = await sim_factory(models=[GGUF], api="openai")
    await stack_factory(
        [ollama.url, f"openai+{openai.url}"],
        routing={"host_strategy": "round-robin", "cold_after_ms": 0},
        **ALIASES,
    )
    hosts = set()
    for i in range(8):
        result = await client.generate("tiny", f"q{i}", options={"num_predict": 3})
        assert isinstance(result, GenerateResult) and result.model == MODEL
        hosts.add(result.host)
    assert hosts == {ollama.url, openai.url}


async def test_a_busy_engine_hands_the_work_to_another_host(
    sim_factory, stack_factory, client: Client
) -> None:
    ollama = await sim_factory(models=[MODEL])
    openai = await sim_factory(models=[GGUF], api="openai")
    openai.engine.set_fault(Fault(kind="busy"))
    await stack_factory([ollama.url, f"openai+{openai.url}"], **ALIASES)
    for i in range(4):
        result = await client.generate("tiny", f"q{i}", options={"num_predict": 2})
        assert isinstance(result, GenerateResult) and result.host == ollama.url


async def _chat_on_an_engine_beside_ollama(
    sim_factory, stack_factory, client: Client, **fields: Any
) -> tuple[ChunkStream, Any, str]:
    """A chat on llama-server's stand-in, an Ollama host beside it: the stream, the
    engine, and the Ollama host's URL."""
    openai = await sim_factory(models=[GGUF], api="openai", tokens_per_second=50)
    await stack_factory([f"openai+{openai.url}"], **ALIASES)
    stream = await client.chat("tiny", CHAT, stream=True, options={"num_predict": 40}, **fields)
    ollama = await sim_factory(models=[MODEL])
    await stack_factory([ollama.url], actors=("executor",), **ALIASES)
    return stream, openai, ollama.url


async def _read_killing(stream: ChunkStream, engine: Any) -> list[int]:
    """Read `stream`, killing `engine` after the first chunk: the seqs read."""
    seqs = []
    async for chunk in stream:
        seqs.append(chunk.seq)
        await engine.kill()
    return seqs


async def test_an_engine_dying_mid_stream_moves_the_answer_to_the_ollama_host(
    sim_factory, stack_factory, client: Client
) -> None:
    """A chat begun on llama-server's stand-in goes on on an Ollama host, from the last
    chunk sent: one stream, no seq missing or repeated, `done` says it moved."""
    stream, engine, ollama = await _chat_on_an_engine_beside_ollama(
        sim_factory, stack_factory, client
    )
    seqs = await _read_killing(stream, engine)
    assert stream.done is not None and stream.done.moved and stream.done.host == ollama
    assert seqs == list(range(1, len(seqs) + 1)) and stream.done.seq == len(seqs) + 1
    assert stream.done.eval_count == 40  # num_predict counted across both hosts


async def test_an_answer_that_opted_out_of_moving_ends_with_a_typed_error(
    sim_factory, stack_factory, client: Client
) -> None:
    """`migrate: false`: the engine's death mid-stream is `upstream_error`, and the next
    request goes to the host that is left."""
    stream, engine, ollama = await _chat_on_an_engine_beside_ollama(
        sim_factory, stack_factory, client, migrate=False
    )
    with pytest.raises(UpstreamError):
        await _read_killing(stream, engine)
    result = await client.generate("tiny", "next", options={"num_predict": 2})
    assert isinstance(result, GenerateResult) and result.host == ollama


async def test_the_monitor_shows_an_engine_and_refuses_what_it_cannot_do(
    sim_factory, stack_factory, client: Client
) -> None:
    openai = await sim_factory(models=[GGUF], api="openai", num_parallel=3)
    ollama = await sim_factory(models=["llama3.2:3b"])
    await stack_factory([ollama.url, f"openai+{openai.url}"], actors=HEALTH, **ALIASES)
    fleet = client.fleet

    async def seen() -> bool:
        status = await fleet.status()
        return any(h.host == openai.url and h.state is HostState.UP for h in status.hosts) and any(
            r.host == openai.url and r.slots == 3 for r in status.rows
        )

    await eventually(seen, timeout=10.0)
    status = await fleet.status()
    health = next(h for h in status.hosts if h.host == openai.url)
    assert health.kind == "openai" and health.slots == 3 and health.busy == 0
    assert [m.name for m in health.models] == [MODEL]
    row = next(r for r in status.rows if r.host == openai.url)
    assert row.model == MODEL and row.loaded
    pulled = await fleet.models("pull", "llama3.2:3b")
    refused = {r.host: r.error for r in pulled.results}
    assert refused[ollama.url] is None
    assert refused[openai.url] is not None and refused[openai.url].code == "not_supported"
    assert "cannot pull" in refused[openai.url].message
    with pytest.raises(NotSupported, match="cannot delete"):
        await fleet.models("delete", "tiny", host=openai.url)
    with pytest.raises(NotSupported, match="cannot unload"):
        await fleet.models("unload", "tiny", host=openai.url)
    loaded = await fleet.models("load", "tiny", host=openai.url)
    assert loaded.results[0].status == "loaded"


async def test_an_engine_loading_its_model_is_loading_not_down(
    sim_factory, stack_factory, client: Client
) -> None:
    openai = await sim_factory(models=[GGUF], api="openai", load_ms=60_000)
    await stack_factory([f"openai+{openai.url}"], actors=HEALTH, **ALIASES)

    async def loading() -> bool:
        status = await client.fleet.status()
        return any(h.host == openai.url and h.state is HostState.LOADING for h in status.hosts)

    await eventually(loading, timeout=10.0)


async def test_automatic_pulls_leave_engines_alone(
    sim_factory, stack_factory, client: Client, nc, prefix: str
) -> None:
    """An engine cannot pull: automatic pulls go to the Ollama host only, and no pull of
    any kind is tried on the engine (whose every attempt would fail `not_supported`)."""
    ollama = await sim_factory(models=["llama3.2:3b"])
    openai = await sim_factory(models=[GGUF], api="openai")
    pulls: list[str] = []

    async def seen(msg: Msg) -> None:
        pulls.append(msg.subject)

    sub = await nc.subscribe(Subjects(prefix).pull_progresses(), cb=seen)
    await stack_factory(
        [ollama.url, f"openai+{openai.url}"],
        actors=("health",),
        roles={"primary": "llama3.2:3b", "fast": "mistral:7b", "backup": "llama3.2:3b"},
        health={"auto_pull": True},
        **ALIASES,
    )

    async def both_checked() -> bool:
        status = await client.fleet.status()
        return {h.host for h in status.hosts if h.state is HostState.UP} == {
            ollama.url,
            openai.url,
        }

    await eventually(lambda: ollama.engine.find("mistral:7b") is not None)
    await eventually(both_checked, timeout=10.0)
    await nc.flush()
    await sub.unsubscribe()
    assert pulls and all(model_token(ollama.url) in s for s in pulls), pulls
