"""The simulator as llama-server (`api="openai"`): the official `openai` client against it,
the SSE framing and key order byte by byte, slots, loading, errors and every fault kind."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from actors.simulator import Fault, SimulatorServer
from actors.simulator.text import embedding

GEN = "llama3.2:3b"
HI = [{"role": "user", "content": "Name a river."}]
ASK = {"messages": HI, "seed": 3}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
CHUNK_KEYS = ["choices", "created", "id", "model", "system_fingerprint", "object"]
TIMINGS = ["cache_n", "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
           "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second"]  # fmt: skip


@pytest_asyncio.fixture(loop_scope="session")
async def llama(sim_factory) -> SimulatorServer:
    """One simulated llama-server with one chat model, at full speed."""
    return await sim_factory(models=[GEN], api="openai", num_parallel=2)


@pytest_asyncio.fixture(loop_scope="session")
async def http(llama: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    """A plain HTTP client on `llama`, to read the bytes as they come."""
    async with httpx.AsyncClient(base_url=llama.url, timeout=10.0, verify=False) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def client(llama: SimulatorServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official client on `llama`, without retries (a 503 must show, not be retried)."""
    async with connect(llama) as official:
        yield official


def connect(sim: SimulatorServer) -> openai.AsyncOpenAI:
    transport = httpx.AsyncClient(timeout=10.0, verify=False)
    return openai.AsyncOpenAI(
        base_url=f"{sim.url}/v1", api_key="unused", max_retries=0, http_client=transport
    )


def frames(body: bytes) -> list[str]:
    """The events of an SSE body, each checked to be llama-server's `data: ...` framing."""
    text = body.decode()
    assert text.endswith("\n\n"), text[-80:]
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e.removeprefix("data: ") for e in events]


async def sse(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[str]:
    """The events of a streamed answer, the `[DONE]` marker included."""
    resp = await http.post(path, json={**body, "stream": True})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/event-stream"
    return frames(resp.content)


def deltas(events: list[str]) -> list[dict[str, Any]]:
    return [json.loads(e) for e in events if e != "[DONE]"]


def content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


# -- the host -------------------------------------------------------------------------------


async def test_health_is_503_while_the_models_load(sim_factory) -> None:
    """With load_ms the host loads as it starts: 503 "Loading model" everywhere but the
    model lists and /_sim until then, 200 after; a restarted host loads again."""
    started = time.perf_counter()
    sim = await sim_factory(models=[GEN], api="openai", load_ms=400)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        health = await http.get("/health")
        chat = await http.post("/v1/chat/completions", json=ASK)
        listed = await http.get("/v1/models")
        stats = await http.get("/_sim/stats")
        loading = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        assert (health.status_code, health.json()) == (503, loading)
        assert (chat.status_code, chat.json()) == (503, loading)
        assert listed.status_code == stats.status_code == 200
        assert sim.engine.stats.generations == 0
        await until_healthy(sim, http)
        assert time.perf_counter() - started >= 0.4
        assert (await http.post("/v1/chat/completions", json=ASK)).status_code == 200
        await sim.kill()
        await sim.start()
        assert (await http.get("/health")).status_code == 503
        await until_healthy(sim, http)


async def until_healthy(sim: SimulatorServer, http: httpx.AsyncClient) -> None:
    """Wait for the load the host started (joining it, as a request to the engine would),
    then find /health 200."""
    info = sim.engine.find(GEN)
    assert info is not None
    async with sim.engine.using(info, math.inf, 4096):  # the context the host loads with
        pass
    resp = await http.get("/health")
    assert (resp.status_code, resp.json()) == (200, {"status": "ok"})


async def test_models_list_both_shapes(sim_factory) -> None:
    """/v1/models and /models carry llama-server's Ollama-style `models` and OpenAI's `data`."""
    sim = await sim_factory(models=[GEN, "nomic-embed-text"], api="openai")
    async with httpx.AsyncClient(base_url=sim.url) as http, connect(sim) as client:
        raw = (await http.get("/v1/models")).json()
        assert (await http.get("/models")).json()["data"] == raw["data"]
        listed = [m.id async for m in client.models.list()]
    assert listed == [GEN, "nomic-embed-text"]  # as llama-server names them: no `:latest`
    assert raw["object"] == "list" and [m["name"] for m in raw["models"]] == listed
    first = raw["data"][0]
    assert first["object"] == "model" and first["owned_by"] == "llamacpp"
    assert first["meta"]["n_ctx"] == 4096 and first["meta"]["n_ctx_train"] == 131072
    assert raw["models"][0]["capabilities"] == ["completion"]
    assert raw["models"][1]["capabilities"] == []


async def test_props_and_slots_describe_the_slots(http: httpx.AsyncClient) -> None:
    """/props gives total_slots and n_ctx; /slots one idle entry per slot."""
    props = (await http.get("/props")).json()
    assert props["total_slots"] == 2 and props["model_alias"] == GEN
    assert props["default_generation_settings"]["n_ctx"] == 4096
    assert props["endpoint_slots"] is True and props["build_info"].startswith("b")
    slots = (await http.get("/slots")).json()
    assert slots == [
        {"id": 0, "n_ctx": 4096, "speculative": False, "is_processing": False},
        {"id": 1, "n_ctx": 4096, "speculative": False, "is_processing": False},
    ]


async def test_slots_show_a_paced_answer_and_free_it_when_the_client_leaves(sim_factory) -> None:
    """While a paced answer streams one slot is processing (and /metrics counts it); a
    client that leaves mid-answer frees it."""
    sim = await sim_factory(models=[GEN], api="openai", tokens_per_second=40, num_parallel=2)
    async with httpx.AsyncClient(base_url=sim.url) as http, connect(sim) as client:
        stream = await client.chat.completions.create(
            model="any", messages=HI, stream=True, max_tokens=200
        )
        chunks = [await anext(stream) for _ in range(2)]
        busy = (await http.get("/slots")).json()
        metrics = (await http.get("/metrics")).text
        await stream.close()
        await sim.engine.wait_idle()
        idle = (await http.get("/slots")).json()
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[1].choices[0].delta.content
    working = [s for s in busy if s["is_processing"]]
    assert len(working) == 1 and working[0]["next_token"][0]["n_decoded"] >= 1
    assert working[0]["next_token"][0]["n_remain"] <= 199
    assert "llamacpp:requests_processing 1\n" in metrics
    assert not any(s["is_processing"] for s in idle)


# -- chat --------------------------------------------------------------------------------------


async def test_chat_whole_with_usage_and_timings(client: openai.AsyncOpenAI) -> None:
    """A chat.completion with the message, finish_reason, usage and llama-server's timings."""
    reply = await client.chat.completions.create(model="anything", messages=HI, seed=3)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.model == GEN
    assert reply.id.startswith("chatcmpl-") and len(reply.id) == 41
    assert reply.system_fingerprint and choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.content
    assert reply.usage is not None and reply.usage.completion_tokens >= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    timings = (reply.model_extra or {})["timings"]
    assert list(timings) == TIMINGS and timings["predicted_n"] == reply.usage.completion_tokens


async def test_a_chat_stream_is_llama_servers_sse(http: httpx.AsyncClient) -> None:
    """Role chunk, one content chunk per token, a finish chunk with timings, then with
    include_usage a chunk with no choices carrying usage and timings; `[DONE]` last."""
    plain = await sse(http, "/v1/chat/completions", ASK)
    usage = await sse(
        http, "/v1/chat/completions", {**ASK, "stream_options": {"include_usage": True}}
    )
    assert plain[-1] == usage[-1] == "[DONE]"
    first, *tokens, finish = deltas(plain)
    assert list(first) == CHUNK_KEYS and first["object"] == "chat.completion.chunk"
    assert first["choices"] == [
        {"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}
    ]
    assert all(
        list(t) == CHUNK_KEYS and list(t["choices"][0]["delta"]) == ["content"] for t in tokens
    )
    assert list(finish) == [*CHUNK_KEYS, "timings"]
    assert finish["choices"] == [{"finish_reason": "stop", "index": 0, "delta": {}}]
    assert len({c["id"] for c in deltas(plain)}) == 1
    *rest, closing, last = deltas(usage)
    assert "timings" not in closing and closing["choices"][0]["finish_reason"] == "stop"
    assert list(last) == [*CHUNK_KEYS, "usage", "timings"] and last["choices"] == []
    assert last["usage"]["completion_tokens"] == len(rest) - 1 == last["timings"]["predicted_n"]
    assert content(rest) == content(tokens)  # the same seed, the same answer


async def test_the_client_streams_what_it_gets_whole(client: openai.AsyncOpenAI) -> None:
    """The official client's stream spells the non-streamed answer; usage counts its tokens."""
    reply = await client.chat.completions.create(model=GEN, messages=HI, seed=8)
    stream = await client.chat.completions.create(
        model=GEN, messages=HI, seed=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    tokens = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert chunks[-1].usage.completion_tokens == tokens == reply.usage.completion_tokens  # type: ignore[union-attr]


async def test_max_tokens_and_n_predict_cut_for_length(client: openai.AsyncOpenAI) -> None:
    """`max_tokens` (or llama-server's `n_predict`) gives exactly that many tokens, "length"."""
    cut = await client.chat.completions.create(model=GEN, messages=HI, seed=3, max_tokens=5)
    predicted = await client.chat.completions.create(
        model=GEN, messages=HI, seed=3, extra_body={"n_predict": 5}
    )
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 5  # type: ignore[union-attr]
    assert predicted.choices[0].message.content == cut.choices[0].message.content


async def test_seed_temperature_and_stop(client: openai.AsyncOpenAI) -> None:
    """The same seed repeats, another differs, temperature 0 repeats; a stop string cuts."""

    async def say(**kw: Any) -> str:
        reply = await client.chat.completions.create(model=GEN, messages=HI, **kw)
        return reply.choices[0].message.content or ""

    one, again, other = await say(seed=5), await say(seed=5), await say(seed=6)
    assert one == again != other
    assert await say(temperature=0) == await say(temperature=0)
    stop = one[len(one) // 2 : len(one) // 2 + 4]
    assert await say(seed=5, stop=["zzz", stop]) == one[: one.index(stop)]


async def test_response_format_gives_valid_json(client: openai.AsyncOpenAI) -> None:
    """json_object gives a JSON object; json_schema one with the schema's keys and types."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "length_km": {"type": "integer", "minimum": 1, "maximum": 7000},
            "navigable": {"type": "boolean"},
        },
        "required": ["name", "length_km", "navigable"],
    }
    loose = await client.chat.completions.create(
        model=GEN, messages=HI, response_format={"type": "json_object"}
    )
    strict = await client.chat.completions.create(
        model=GEN, messages=HI,
        response_format={"type": "json_schema", "json_schema": {"name": "river", "schema": schema}},
    )  # fmt: skip
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)
    doc = json.loads(strict.choices[0].message.content or "")
    assert set(doc) == {"name", "length_km", "navigable"}
    assert isinstance(doc["name"], str) and isinstance(doc["navigable"], bool)
    assert isinstance(doc["length_km"], int) and 1 <= doc["length_km"] <= 7000


async def test_tool_calls_whole_and_streamed_then_the_answer(client: openai.AsyncOpenAI) -> None:
    """A user turn with tools calls one: whole (content null, finish "tool_calls") and
    streamed as OpenAI does (id, type and name first, then argument fragments); after
    the tool's result the model answers in words."""
    whole = await client.chat.completions.create(model=GEN, messages=HI, tools=[WEATHER], seed=2)
    call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert (
        whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None
    )
    assert call.type == "function" and call.function.name == "weather" and len(call.id) == 32  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    stream = await client.chat.completions.create(
        model=GEN, messages=HI, tools=[WEATHER], seed=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = [c async for c in stream]
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    opening, *fragments = calls
    assert opening.index == 0 and opening.id and opening.type == "function"
    assert opening.function.name == "weather" and opening.function.arguments == ""  # type: ignore[union-attr]
    assert all(f.id is None and f.function.name is None for f in fragments)  # type: ignore[union-attr]
    assert json.loads("".join(f.function.arguments for f in fragments)) == arguments  # type: ignore[union-attr, misc]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage.completion_tokens == len(calls)  # type: ignore[union-attr]
    history = [*HI, whole.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "rain"}'}]  # fmt: skip
    answer = await client.chat.completions.create(model=GEN, messages=history, tools=[WEATHER])  # type: ignore[arg-type]
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    none = await client.chat.completions.create(
        model=GEN, messages=HI, tools=[WEATHER], tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None


async def test_a_gguf_is_named_as_given_and_calls_tools(sim_factory) -> None:
    """A model the catalogue does not know (a GGUF file) is listed and answered under its
    own name, no `:latest`, and calls tools as any model behind llama-server's templates."""
    sim = await sim_factory(models=["tiny-q8_0.gguf"], api="openai")
    async with connect(sim) as client:
        listed = [m.id async for m in client.models.list()]
        called = await client.chat.completions.create(model="x", messages=HI, tools=[WEATHER])
    assert listed == ["tiny-q8_0.gguf"] and called.model == "tiny-q8_0.gguf"
    assert called.choices[0].message.tool_calls and called.choices[0].finish_reason == "tool_calls"


async def test_a_thinking_model_streams_reasoning_content(sim_factory) -> None:
    """qwen3 thinks first: `reasoning_content` deltas, then content; whole, both fields."""
    sim = await sim_factory(models=["qwen3:8b"], api="openai")
    async with httpx.AsyncClient(base_url=sim.url) as http:
        chunks = deltas(await sse(http, "/v1/chat/completions", ASK))
        whole = (await http.post("/v1/chat/completions", json=ASK)).json()
    kinds = [next(iter(c["choices"][0]["delta"]), None) for c in chunks[1:-1]]
    assert kinds[0] == "reasoning_content" and kinds[-1] == "content"
    assert kinds == sorted(kinds, key=lambda k: k != "reasoning_content")
    message = whole["choices"][0]["message"]
    assert list(message) == ["role", "reasoning_content", "content"]


async def test_scripts_answer_in_openai_mode_too(
    llama: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """/_sim/scripts stays available: a matching chat is answered with the script's text."""
    await http.post("/_sim/scripts", json={"match": "river", "text": "The Danube.", "count": 1})
    reply = (await http.post("/v1/chat/completions", json=ASK)).json()
    assert reply["choices"][0]["message"]["content"] == "The Danube."
    assert list(llama.engine.stats.prompts)[-1] == HI[0]["content"]


# -- completions and embeddings ----------------------------------------------------------------


async def test_text_completions_whole_and_streamed(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    """text_completion objects; a stream's last chunk carries usage and timings, always."""
    whole = await client.completions.create(
        model=GEN, prompt="Once upon a time", seed=4, max_tokens=6
    )
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 6
    stream = await client.completions.create(
        model=GEN, prompt="Once upon a time", seed=4, max_tokens=6, stream=True
    )
    parts = [c async for c in stream]
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    events = deltas(await sse(http, "/v1/completions", {"prompt": "Once", "max_tokens": 3}))
    keys = ["choices", "created", "model", "system_fingerprint", "object", "id"]
    assert all(list(e) == keys for e in events[:-1])
    assert list(events[-1]) == [
        "choices",
        "created",
        "model",
        "system_fingerprint",
        "object",
        "usage",
        "id",
        "timings",
    ]
    assert events[-1]["choices"] == [
        {"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}
    ]


async def test_embeddings_in_floats_and_base64(sim_factory) -> None:
    """OpenAI's shape; the engine's own unit vectors, as floats or base64 float32s; a chat
    model embeds too (as under `--embeddings`), an embedding model does not chat (501)."""
    sim = await sim_factory(models=[GEN, "nomic-embed-text"], api="openai")
    async with connect(sim) as client, httpx.AsyncClient(base_url=sim.url) as http:
        packed = await client.embeddings.create(
            model="nomic-embed-text", input=["a river", "a road"]
        )
        body = {"model": "nomic-embed-text", "input": "a river", "encoding_format": "float"}
        raw = (await http.post("/v1/embeddings", json=body)).json()
        b64 = (await http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})).json()
        chatty = (await http.post("/v1/embeddings", json={**body, "model": GEN})).json()
        refused = await http.post("/v1/chat/completions", json={**ASK, "model": "nomic-embed-text"})
    expected = embedding("nomic-embed-text:latest", "a river", 768)
    assert [len(d.embedding) for d in packed.data] == [768, 768]
    assert all(
        math.isclose(a, b, rel_tol=1e-6)
        for a, b in zip(packed.data[0].embedding, expected, strict=True)
    )
    assert packed.usage.prompt_tokens == packed.usage.total_tokens > 0
    assert raw["data"] == [{"embedding": expected, "index": 0, "object": "embedding"}]
    assert raw["model"] == "nomic-embed-text" and raw["object"] == "list"
    decoded = struct.unpack("<768f", base64.b64decode(b64["data"][0]["embedding"]))
    assert b64["data"][0]["encoding_format"] == "base64" and math.isclose(
        decoded[0], expected[0], rel_tol=1e-6
    )
    assert len(chatty["data"][0]["embedding"]) == 3072
    assert refused.status_code == 501 and refused.json()["error"]["type"] == "not_supported_error"


# -- errors ------------------------------------------------------------------------------------


async def test_errors_have_llama_servers_shape(http: httpx.AsyncClient) -> None:
    """400 invalid_request_error for bad bodies, 404 "File Not Found" for other paths and
    methods, 400 exceed_context_size_error for a prompt longer than the context."""
    malformed = await http.post("/v1/chat/completions", content=b"not json")
    missing = await http.post("/v1/chat/completions", json={})
    bad_format = await http.post(
        "/v1/chat/completions", json={**ASK, "response_format": {"type": "bogus"}}
    )
    long = await http.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "word " * 20000}]}
    )
    for resp in (malformed, missing, bad_format):
        assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
        assert list(resp.json()["error"]) == ["code", "message", "type"]
    assert missing.json()["error"]["message"] == "'messages' is required"
    assert "bogus" in bad_format.json()["error"]["message"]
    error = long.json()["error"]
    assert long.status_code == 400 and error["type"] == "exceed_context_size_error"
    assert error["n_ctx"] == 4096 and error["n_prompt_tokens"] > 4096
    for resp in (await http.get("/nowhere"), await http.get("/v1/chat/completions")):
        assert (resp.status_code, resp.json()) == (
            404,
            {"error": {"message": "File Not Found", "type": "not_found_error", "code": 404}},
        )


async def test_with_several_models_the_request_must_name_one(sim_factory) -> None:
    """One model takes any name; with several, none or an unknown one is refused (400,
    as llama-server's router mode answers) and a known one is used and named."""
    sim = await sim_factory(models=[GEN, "qwen2.5:7b"], api="openai")
    async with httpx.AsyncClient(base_url=sim.url) as http:
        nameless = await http.post("/v1/chat/completions", json=ASK)
        unknown = await http.post("/v1/chat/completions", json={**ASK, "model": "gpt-4"})
        known = await http.post("/v1/chat/completions", json={**ASK, "model": "qwen2.5:7b"})
        props = (await http.get("/props", params={"model": "qwen2.5:7b"})).json()
    assert (nameless.status_code, nameless.json()["error"]["message"]) == (
        400,
        "model name is missing from the request",
    )
    assert (unknown.status_code, unknown.json()["error"]["message"]) == (400, "model not found")
    assert known.json()["model"] == "qwen2.5:7b"
    assert (
        props["model_alias"] == "qwen2.5:7b"
        and props["default_generation_settings"]["n_ctx"] == 4096
    )


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "kind_of_error"),
    [("busy", 503, "unavailable_error"), ("error", 500, "server_error")],
    ids=["busy", "error"],
)
async def test_busy_and_error_refuse_before_anything(
    llama: SimulatorServer, client: openai.AsyncOpenAI, kind: str, status: int, kind_of_error: str
) -> None:
    """`busy` is a 503, `error` a 500, in llama-server's shape, streamed or not."""
    llama.engine.set_fault(Fault(kind=kind, count=2))  # type: ignore[arg-type]
    with pytest.raises(openai.APIStatusError) as whole:
        await client.chat.completions.create(model=GEN, messages=HI)
    with pytest.raises(openai.APIStatusError) as streamed:
        await client.chat.completions.create(model=GEN, messages=HI, stream=True)
    for caught in (whole.value, streamed.value):
        assert caught.status_code == status and caught.body["type"] == kind_of_error  # type: ignore[index]
    assert llama.engine.stats.generations == 0 and llama.engine.faults == []


async def test_die_after_drops_the_connection_mid_stream(
    llama: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """After N tokens the connection drops: no finish chunk, no [DONE]; the slot is freed."""
    llama.engine.set_fault(Fault(kind="die_after", tokens=3, count=2))
    got: list[bytes] = []
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        async with http.stream(
            "POST", "/v1/chat/completions", json={**ASK, "stream": True, "max_tokens": 20}
        ) as resp:
            async for piece in resp.aiter_bytes():
                got.append(piece)
    chunks = deltas(frames(b"".join(got)))
    assert len(chunks) == 4 and all(c["choices"][0]["finish_reason"] is None for c in chunks)
    with pytest.raises(httpx.RemoteProtocolError):  # no response at all when not streaming
        await http.post("/v1/chat/completions", json=ASK)
    await llama.engine.wait_idle()


async def test_error_after_sends_an_error_event_and_ends(
    llama: SimulatorServer, http: httpx.AsyncClient, client: openai.AsyncOpenAI
) -> None:
    """After N tokens one `data: {"error": ...}` event, then the body ends without [DONE]
    (the client raises it); before the first token, or not streaming, a 500."""
    llama.engine.set_fault(Fault(kind="error_after", tokens=2, count=2))
    events = await sse(http, "/v1/chat/completions", {**ASK, "max_tokens": 20})
    assert len(events) == 4 and "[DONE]" not in events
    assert json.loads(events[-1]) == {
        "error": {"code": 500, "message": "Compute error.", "type": "server_error"}
    }
    stream = await client.chat.completions.create(
        model=GEN, messages=HI, stream=True, max_tokens=20
    )
    with pytest.raises(openai.APIError, match=r"Compute error\."):
        async for _ in stream:
            pass
    llama.engine.set_fault(Fault(kind="error_after", tokens=0, count=1, message="boom"))
    first = await http.post("/v1/chat/completions", json={**ASK, "stream": True})
    assert (first.status_code, first.json()["error"]["message"]) == (500, "boom")


async def test_truncate_after_ends_cleanly_without_the_end(
    llama: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """The stream ends after N tokens with no finish chunk or [DONE]; whole, the answer
    is cut short: the text so far, finish_reason null, no usage."""
    llama.engine.set_fault(Fault(kind="truncate_after", tokens=3, count=2))
    events = await sse(http, "/v1/chat/completions", {**ASK, "max_tokens": 20})
    chunks = deltas(events)
    assert len(events) == len(chunks) == 4  # the role and three tokens, no [DONE]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    whole = (await http.post("/v1/chat/completions", json={**ASK, "max_tokens": 20})).json()
    assert whole["choices"][0]["finish_reason"] is None and "usage" not in whole
    assert whole["choices"][0]["message"]["content"] == content(chunks)


async def test_a_stall_keeps_the_slot_until_the_client_leaves(
    llama: SimulatorServer, client: openai.AsyncOpenAI
) -> None:
    """After N tokens nothing more comes; the slot stays busy until the client goes."""
    llama.engine.set_fault(Fault(kind="stall", tokens=2, count=1))
    stream = await client.chat.completions.create(model=GEN, messages=HI, stream=True)
    assert [(await anext(stream)).choices[0].delta.role for _ in range(3)] == [
        "assistant",
        None,
        None,
    ]
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await anext(stream)
    assert llama.engine.stats.in_flight == 1
    await stream.close()
    await llama.engine.wait_idle()


async def test_a_slow_first_token_holds_the_headers_back(
    llama: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """The status line and the first chunk wait `delay_ms`; the next answer does not."""
    llama.engine.set_fault(Fault(kind="slow_first_token", delay_ms=200, count=1))
    started = time.perf_counter()
    async with http.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as resp:
        waited = time.perf_counter() - started
        await resp.aread()
    assert resp.status_code == 200 and waited >= 0.2
    started = time.perf_counter()
    await http.post("/v1/chat/completions", json=ASK)
    assert time.perf_counter() - started < 0.2


async def test_faults_strike_embeddings_too(sim_factory) -> None:
    """An embedding meets busy (503), error and error_after (500) and die_after (no reply)."""
    sim = await sim_factory(models=["nomic-embed-text"], api="openai")
    body = {"input": "x"}
    async with httpx.AsyncClient(base_url=sim.url) as http:
        for kind, expected in (("busy", 503), ("error", 500), ("error_after", 500)):
            sim.engine.set_fault(Fault(kind=kind, count=1))  # type: ignore[arg-type]
            assert (await http.post("/v1/embeddings", json=body)).status_code == expected
        sim.engine.set_fault(Fault(kind="die_after", count=1))
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/v1/embeddings", json=body)
        assert (await http.post("/v1/embeddings", json=body)).status_code == 200


async def test_the_control_api_arms_faults_in_openai_mode(http: httpx.AsyncClient) -> None:
    """POST /_sim/faults works here too: the next chat is refused, then served."""
    await http.post("/_sim/faults", json={"kind": "busy", "count": 1})
    codes = [(await http.post("/v1/chat/completions", json=ASK)).status_code for _ in range(2)]
    assert codes == [503, 200]


# -- the CLI -----------------------------------------------------------------------------------


async def test_the_cli_serves_llama_server() -> None:
    """`ollamesh sim --api openai --port 0` logs its URL and serves /health until SIGTERM."""
    script = (
        "import argparse, sys\n"
        "from actors.cli.sim import register\n"
        "parser = argparse.ArgumentParser(prog='ollamesh')\n"
        "register(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, "sim", "--api", "openai", "--port", "0", "--models", GEN,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            line = await proc.stderr.readline()
        event = json.loads(line)
        assert event["event"] == "simulator listening" and event["api"] == "openai"
        async with httpx.AsyncClient(base_url=event["url"]) as http:
            assert (await http.get("/health")).json() == {"status": "ok"}
            assert (await http.get("/v1/models")).json()["data"][0]["id"] == GEN
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
