"""The official `ollama` Python client against the simulator: its models accept every reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import ollama
import pytest
import pytest_asyncio
from pydantic import BaseModel

from actors.simulator import BUSY_ERROR, Fault, SimulatorServer

GEN = "llama3.2:3b"
CHAT = [{"role": "user", "content": "Name a mountain."}]


def connect(sim: SimulatorServer) -> ollama.AsyncClient:
    """The official client on `sim` (plain HTTP: no certificates to load)."""
    return ollama.AsyncClient(host=sim.url, verify=False)


@pytest_asyncio.fixture(loop_scope="session")
async def client(sim: SimulatorServer) -> AsyncIterator[ollama.AsyncClient]:
    """The official async client on the `sim` host."""
    official = connect(sim)
    yield official
    await official.close()


class Peak(BaseModel):
    name: str
    height_m: int
    climbed: bool


async def test_list_parses_every_model(client: ollama.AsyncClient) -> None:
    """`list()` gives ListResponse models with datetimes, sizes and details."""
    listed = await client.list()
    assert [m.model for m in listed.models] == [GEN, "qwen2.5:7b", "nomic-embed-text:latest"]
    first = listed.models[0]
    assert isinstance(first.modified_at, datetime) and first.size and first.size > 10**9
    assert first.details is not None and first.details.family == "llama"
    assert first.details.parameter_size == "3.2B" and first.details.quantization_level == "Q4_K_M"


async def test_show_parses_capabilities_and_model_info(client: ollama.AsyncClient) -> None:
    """`show()` gives capabilities, the `model_info` map and the template."""
    shown = await client.show(GEN)
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "llama"
    assert shown.template and shown.modelfile and isinstance(shown.modified_at, datetime)
    embedder = await client.show("nomic-embed-text")
    assert embedder.capabilities == ["embedding"]


async def test_generate_whole_and_streamed(client: ollama.AsyncClient) -> None:
    """A GenerateResponse whole, and a stream of them ending in `done` with stats."""
    options = ollama.Options(seed=7, num_predict=12)
    reply = await client.generate(GEN, "Why is the sky blue?", options=options)
    assert reply.done and reply.done_reason == "length" and reply.eval_count == 12
    assert reply.response and reply.context and reply.total_duration
    stream = await client.generate(GEN, "Why is the sky blue?", options=options, stream=True)
    parts = [p async for p in stream]
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response or "" for p in parts) == reply.response
    assert parts[-1].prompt_eval_count == reply.prompt_eval_count


async def test_chat_whole_and_streamed(client: ollama.AsyncClient) -> None:
    """A ChatResponse whole, and a stream of them that spells the same message."""
    reply = await client.chat("qwen2.5:7b", CHAT, options={"seed": 2})
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done_reason == "stop" and reply.eval_count
    stream = await client.chat("qwen2.5:7b", CHAT, options={"seed": 2}, stream=True)
    parts = [p async for p in stream]
    assert "".join(p.message.content or "" for p in parts) == reply.message.content
    assert parts[-1].done and parts[-1].eval_duration


async def test_structured_output_validates_against_the_schema(client: ollama.AsyncClient) -> None:
    """`format=Model.model_json_schema()` gives JSON the same pydantic model accepts."""
    reply = await client.chat(GEN, CHAT, format=Peak.model_json_schema())
    peak = Peak.model_validate_json(reply.message.content or "")
    assert peak.name and isinstance(peak.height_m, int)


def weather(city: str, days: int) -> str:
    """The forecast for `city`, `days` ahead (a tool for the model to call)."""
    return f"sunny in {city} for {days} days"


async def test_tools_are_called_with_arguments_their_schema_accepts(
    client: ollama.AsyncClient, sim_factory
) -> None:
    """With tools, a user's message is answered by a call (whole or streamed, the same
    call); the tool's result is answered in words; a model without tools refuses them."""
    reply = await client.chat(GEN, CHAT, tools=[weather], options={"seed": 4})
    (call,) = reply.message.tool_calls or []
    assert call.function.name == "weather" and reply.message.content == ""
    assert isinstance(call.function.arguments["city"], str)
    assert isinstance(call.function.arguments["days"], int)
    stream = await client.chat(GEN, CHAT, tools=[weather], options={"seed": 4}, stream=True)
    parts = [p async for p in stream]
    assert [c for p in parts for c in p.message.tool_calls or []] == [call]
    assert "".join(p.message.content or "" for p in parts) == "" and parts[-1].eval_count
    answered = [*CHAT, reply.message, {"role": "tool", "content": "sunny", "tool_name": "weather"}]
    words = await client.chat(GEN, answered, tools=[weather])
    assert words.message.content and not words.message.tool_calls
    plain = connect(await sim_factory(models=["llava:7b"]))
    with pytest.raises(ollama.ResponseError) as refused:
        await plain.chat("llava:7b", CHAT, tools=[weather])
    await plain.close()
    assert refused.value.status_code == 400 and "does not support tools" in refused.value.error


async def test_thinking_and_images_parse(sim_factory) -> None:
    """`think=True` fills `message.thinking`; raw image bytes reach a vision model."""
    sim = await sim_factory(models=["qwen3:8b", "llava:7b"])
    client = connect(sim)
    try:
        thought = await client.chat("qwen3:8b", CHAT, think=True)
        seen = await client.generate("llava:7b", "What is this?", images=[b"\x89PNG\r\n\x1a\n"])
    finally:
        await client.close()
    assert thought.message.thinking and thought.message.content
    assert seen.response and seen.prompt_eval_count and seen.prompt_eval_count > 500


async def test_embed_and_legacy_embeddings(client: ollama.AsyncClient) -> None:
    """EmbedResponse has one vector per input; EmbeddingsResponse one vector."""
    embedded = await client.embed("nomic-embed-text", ["one", "two"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 768
    single = await client.embeddings("nomic-embed-text", "one")
    assert list(single.embedding) == list(embedded.embeddings[0])


async def test_ps_lists_what_was_used(client: ollama.AsyncClient) -> None:
    """ProcessResponse gives the loaded model with its expiry, VRAM and context length."""
    await client.generate(GEN, "hi", keep_alive="10m", options={"num_predict": 1})
    running = (await client.ps()).models
    assert [m.model for m in running] == [GEN]
    assert isinstance(running[0].expires_at, datetime)
    assert running[0].size_vram and running[0].context_length == 4096
    unloaded = await client.generate(GEN, keep_alive=0)
    assert unloaded.done_reason == "unload" and (await client.ps()).models == []


async def test_pull_streams_progress_and_delete_removes(client: ollama.AsyncClient) -> None:
    """ProgressResponse lines end in success; the model is listed, then deleted."""
    progress = [p async for p in await client.pull("gemma3:1b", stream=True)]
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    assert any(p.digest and p.total and p.completed == p.total for p in progress)
    assert (await client.pull("gemma3:270m")).status == "success"
    names = {m.model for m in (await client.list()).models}
    assert {"gemma3:1b", "gemma3:270m"} <= names
    assert (await client.delete("gemma3:1b")).status == "success"
    with pytest.raises(ollama.ResponseError) as info:
        await client.delete("gemma3:1b")
    assert info.value.status_code == 404


async def test_errors_become_response_errors(
    sim: SimulatorServer, client: ollama.AsyncClient
) -> None:
    """Unknown models are 404s, a busy host a 503, a missing pull and a mid-stream error too."""
    with pytest.raises(ollama.ResponseError) as unknown:
        await client.generate("nope:1b", "hi")
    assert unknown.value.status_code == 404
    assert unknown.value.error == 'model "nope:1b" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as streamed:
        _ = [p async for p in await client.chat("nope:1b", CHAT, stream=True)]
    assert streamed.value.status_code == 404
    sim.engine.set_fault(Fault(kind="busy", count=1))
    with pytest.raises(ollama.ResponseError) as busy:
        await client.generate(GEN, "hi")
    assert (busy.value.status_code, busy.value.error) == (503, BUSY_ERROR)
    sim.engine.set_fault(Fault(kind="error_after", tokens=2, count=1, message="runner crashed"))
    parts = []
    with pytest.raises(ollama.ResponseError, match="runner crashed"):
        async for part in await client.generate(GEN, "hi", stream=True):
            parts.append(part)
    assert len(parts) == 2
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        _ = [p async for p in await client.pull("missing-model", stream=True)]
