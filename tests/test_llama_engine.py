"""The whole path against a real inference engine: llama.cpp's llama-server on a tiny
random-weight model (tests/_engine_fixtures.py), through the router and an executor.

Its text is nonsense; what is checked is what the engine itself says: token counts
against its own counters and tokenizer, a schema its grammar enforces, its slots."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec
import pytest

from bus.client import Client
from bus.errors import Cancelled, UpstreamError
from schemas import ChatResult, GenerateResult
from tests._engine_fixtures import LlamaServer
from tests.helpers import eventually

# The fixture's model id (`--alias`), and the fleet's name for it.
OWN = "tiny-llama"
MODEL = "tiny:latest"
ALIASES = {"models": {"aliases": {OWN: "tiny"}}}
CHAT = [{"role": "user", "content": "hello world"}]


async def _get(url: str, path: str) -> Any:
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
        resp = await http.get(path)
        resp.raise_for_status()
        return resp.json() if path != "/metrics" else resp.text


async def _post(url: str, path: str, body: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
        resp = await http.post(path, json=body)
        resp.raise_for_status()
        return resp.json()


async def _predicted(url: str) -> int:
    """The engine's own count of tokens generated since it started (`/metrics`)."""
    for line in (await _get(url, "/metrics")).splitlines():
        if line.startswith("llamacpp:tokens_predicted_total"):
            return int(float(line.split()[-1]))
    raise AssertionError("no llamacpp:tokens_predicted_total in /metrics")


async def _tokens(url: str, text: str) -> int:
    """How many tokens the engine's tokenizer makes of `text` (with its BOS)."""
    return len((await _post(url, "/tokenize", {"content": text, "add_special": True}))["tokens"])


async def _busy(url: str) -> int:
    return sum(slot["is_processing"] for slot in await _get(url, "/slots"))


async def test_streamed_chat_and_generate_carry_the_engines_own_counts(
    llama_server: LlamaServer, stack_factory, client: Client
) -> None:
    url = llama_server.url
    await stack_factory([f"openai+{url}"], **ALIASES)
    before = await _predicted(url)
    stream = await client.chat("tiny", CHAT, stream=True, options={"num_predict": 24})
    chunks = [c async for c in stream]
    done = stream.done
    assert done is not None and done.host == url and done.model == MODEL
    assert "".join(c.text for c in chunks) != ""
    assert done.eval_count == 24 == await _predicted(url) - before
    rendered = (await _post(url, "/apply-template", {"messages": CHAT}))["prompt"]
    assert done.prompt_eval_count == await _tokens(url, rendered)
    # llama.cpp's timings become Ollama's durations.
    assert done.eval_duration > 0 and done.prompt_eval_duration > 0
    assert done.total_duration >= done.eval_duration and done.done_reason == "length"

    before = await _predicted(url)
    stream = await client.generate("tiny", "Once upon", stream=True, options={"num_predict": 9})
    text = "".join([c.text async for c in stream])
    done = stream.done
    assert done is not None and text != ""
    assert done.eval_count == 9 == await _predicted(url) - before
    assert done.prompt_eval_count == await _tokens(url, "Once upon")


async def test_a_json_schema_yields_json_that_validates(
    llama_server: LlamaServer, stack_factory, client: Client
) -> None:
    """The engine enforces the schema with a grammar (strings bounded, so it ends)."""
    await stack_factory([f"openai+{llama_server.url}"], **ALIASES)
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    result = await client.chat("tiny", CHAT, format=schema, options={"num_predict": 200})
    assert isinstance(result, ChatResult)
    answer = msgspec.json.decode(result.message.content)
    assert set(answer) == {"name", "age"}
    assert isinstance(answer["name"], str) and len(answer["name"]) <= 8
    assert isinstance(answer["age"], int) and not isinstance(answer["age"], bool)
    assert result.done_reason == "stop"


async def test_a_cancel_frees_the_engines_slot(
    llama_server: LlamaServer, stack_factory, client: Client
) -> None:
    url = llama_server.url
    await stack_factory([f"openai+{url}"], **ALIASES)
    stream = await client.chat("tiny", CHAT, stream=True, options={"num_predict": 3000})
    async for _ in stream:
        break  # the engine is generating
    assert await _busy(url) == 1
    await stream.cancel()
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await eventually(lambda: _busy_is(url, 0), timeout=1.0)
    freed_s = loop.time() - asked
    with pytest.raises(Cancelled):
        async for _ in stream:
            pass
    assert freed_s < 1.0


async def _busy_is(url: str, n: int) -> bool:
    return await _busy(url) == n


async def test_a_mixed_fleet_serves_one_model_from_both_kinds(
    llama_server: LlamaServer, sim_factory, stack_factory, client: Client
) -> None:
    sim = await sim_factory(models=[MODEL])
    await stack_factory(
        [sim.url, f"openai+{llama_server.url}"],
        routing={"host_strategy": "round-robin", "cold_after_ms": 0},
        **ALIASES,
    )
    hosts = set()
    for i in range(8):
        result = await client.generate("tiny", f"q{i}", options={"num_predict": 4})
        assert isinstance(result, GenerateResult) and result.model == MODEL
        assert result.eval_count == 4
        hosts.add(result.host)
    assert hosts == {sim.url, llama_server.url}


@pytest.mark.parametrize("migrate", [True, False])
async def test_killing_the_engine_mid_stream_moves_the_answer_or_ends_it_typed(
    llama_server: LlamaServer, sim_factory, stack_factory, client: Client, migrate: bool
) -> None:
    """llama-server SIGKILLed mid-answer: the answer goes on on the other host from the
    last chunk sent (one stream, seq without a gap, every token counted), or, for a
    request that opted out, ends with `upstream_error`; the next request goes there."""
    url = llama_server.url
    await stack_factory([f"openai+{url}"], **ALIASES)
    stream = await client.chat(
        "tiny", CHAT, stream=True, options={"num_predict": 3000}, migrate=migrate
    )
    seqs = []
    async for chunk in stream:
        seqs.append(chunk.seq)
        break  # the engine is generating
    sim = await sim_factory(models=[MODEL])
    await stack_factory([sim.url], actors=("executor",), **ALIASES)
    llama_server.kill()
    if migrate:
        seqs += [chunk.seq async for chunk in stream]
        assert stream.done is not None and stream.done.moved and stream.done.host == sim.url
        assert seqs == list(range(1, len(seqs) + 1)) and stream.done.seq == len(seqs) + 1
        assert stream.done.eval_count == 3000
    else:
        with pytest.raises(UpstreamError, match="stream broke"):
            async for _ in stream:
                pass
    result = await client.generate("tiny", "next", options={"num_predict": 2})
    assert isinstance(result, GenerateResult) and result.host == sim.url
