"""The HTTP gateway's OpenAI routes: the official `openai` client, unchanged, against the
fleet (chat streamed with usage, tool calls, JSON schema output, legacy completions,
embeddings, models, typed errors, its retries); the SSE framing byte by byte."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import httpx
import openai
import pytest
from pydantic import BaseModel

from actors.gateway import openai as routes
from actors.gateway.http import App, Family, Request, json_reply
from actors.gateway.server import HttpServer
from bus.errors import Overloaded

MODELS = ["llama3.2:3b", "qwen2.5:7b", "nomic-embed-text"]
HI = [{"role": "user", "content": "Name a mountain."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}


@pytest.fixture
async def gateway(sim_factory, stack_factory):
    """The fleet behind the gateway; `qwen2.5:7b` is limited to 60 requests a minute."""
    sim = await sim_factory(models=MODELS, tokens_per_second=400)
    stack = await stack_factory(
        [sim.url], actors=("router", "executor", "health", "gateway"), gateway={"port": 0},
        routing={"limits": {"qwen2.5:7b": {"rpm": 60}}},
    )  # fmt: skip
    assert stack.gateway is not None
    return sim, stack.gateway.url


def connect(url: str, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", **kw)


async def test_chat_streams_with_the_role_first_and_usage_last(gateway) -> None:
    _, url = gateway
    async with connect(url) as client:
        stream = await client.chat.completions.create(
            model="llama3.2:3b", messages=HI, stream=True, max_tokens=7,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [c async for c in stream]
        whole = await client.chat.completions.create(model="llama3.2:3b", messages=HI,
                                                     max_completion_tokens=5, seed=3)  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:-1])
    *content, last, usage = chunks
    assert "".join(c.choices[0].delta.content or "" for c in content)
    assert [c.choices[0].finish_reason for c in content] == [None] * len(content)
    assert last.choices[0].finish_reason == "length" and last.usage is None
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 7 and usage.usage.prompt_tokens > 0
    assert usage.usage.total_tokens == 7 + usage.usage.prompt_tokens
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    assert whole.object == "chat.completion" and whole.choices[0].message.content
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 5


async def test_tool_calls_whole_and_streamed(gateway) -> None:
    """A call has an id, `function` type, and JSON arguments; streamed, its first
    fragment has index, id, type and name; the finish reason is `tool_calls`."""
    _, url = gateway
    async with connect(url) as client:
        whole = await client.chat.completions.create(model="llama3.2:3b", messages=HI,
                                                     tools=[WEATHER], seed=1)  # fmt: skip
        stream = await client.chat.completions.create(model="llama3.2:3b", messages=HI,
                                                      tools=[WEATHER], seed=1, stream=True)  # fmt: skip
        chunks = [c async for c in stream]
        choice = whole.choices[0]
        (call,) = choice.message.tool_calls or []
        # The call's result goes back as a tool message, answered in words.
        answered = await client.chat.completions.create(model="llama3.2:3b", tools=[WEATHER],
            messages=[*HI, choice.message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "sunny"}],
        )  # fmt: skip
    assert choice.finish_reason == "tool_calls"
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "weather"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    fragments = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert len(fragments) == 1
    first = fragments[0]
    assert (first.index, first.type, first.function.name) == (0, "function", "weather")
    assert first.id and json.loads(first.function.arguments) == arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert answered.choices[0].message.content and answered.choices[0].finish_reason == "stop"


class Peak(BaseModel):
    name: str
    height_m: int


async def test_json_schema_and_json_object_output(gateway) -> None:
    _, url = gateway
    schema = {"type": "json_schema",
              "json_schema": {"name": "peak", "schema": Peak.model_json_schema()}}  # fmt: skip
    async with connect(url) as client:
        shaped = await client.chat.completions.create(model="llama3.2:3b", messages=HI,
                                                      response_format=schema)  # fmt: skip
        loose = await client.chat.completions.create(model="llama3.2:3b", messages=HI,
                                                     response_format={"type": "json_object"})  # fmt: skip
    peak = Peak.model_validate_json(shaped.choices[0].message.content or "")
    assert peak.name and isinstance(peak.height_m, int)
    assert isinstance(json.loads(loose.choices[0].message.content or ""), dict)


async def test_legacy_completions_whole_and_streamed(gateway) -> None:
    _, url = gateway
    async with connect(url) as client:
        whole = await client.completions.create(model="llama3.2:3b", prompt="Once", max_tokens=6)
        stream = await client.completions.create(model="llama3.2:3b", prompt="Once",
                                                 max_tokens=6, stream=True)  # fmt: skip
        parts = [c async for c in stream]
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 6
    assert "".join(p.choices[0].text for p in parts) and parts[-1].choices[0].finish_reason


async def test_embeddings_as_floats_and_as_base64(gateway) -> None:
    """The client asks for base64 by default and decodes it; floats on request."""
    _, url = gateway
    async with connect(url) as client:
        packed = await client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
        floats = await client.embeddings.create(model="nomic-embed-text", input="a",
                                                encoding_format="float")  # fmt: skip
    assert [d.index for d in packed.data] == [0, 1] and packed.usage.prompt_tokens > 0
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    async with httpx.AsyncClient(base_url=url) as http:
        raw = (await http.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": "a",
                                                        "encoding_format": "base64"})).json()  # fmt: skip
    vector = base64.b64decode(raw["data"][0]["embedding"])
    assert struct.unpack(f"<{len(vector) // 4}f", vector) == pytest.approx(
        floats.data[0].embedding, rel=1e-6
    )


async def test_models_list_and_retrieve_with_roles_as_aliases(gateway) -> None:
    _, url = gateway
    async with connect(url) as client:
        listed = {m.id: m async for m in client.models.list()}
        one = await client.models.retrieve("qwen2.5:7b")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("no-such:1b")
    assert {"llama3.2:3b", "qwen2.5:7b", "nomic-embed-text:latest"} <= set(listed)
    assert listed["fast"].model_extra == {"alias_of": "llama3.2:3b"}
    assert one.id == "qwen2.5:7b" and one.object == "model" and one.created > 0
    assert missing.value.code == "model_not_found"


async def test_the_client_s_mistakes_are_typed_400s_and_404s(gateway) -> None:
    _, url = gateway
    async with connect(url, max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(model="no-such:1b", messages=HI)
        with pytest.raises(openai.BadRequestError) as several:
            await client.chat.completions.create(model="llama3.2:3b", messages=HI, n=2)
        with pytest.raises(openai.BadRequestError) as remote:
            await client.chat.completions.create(model="llava:7b", messages=[{
                "role": "user", "content": [{"type": "image_url",
                                             "image_url": {"url": "https://x/y.png"}}]}])  # fmt: skip
        with pytest.raises(openai.BadRequestError) as typed:
            await client.chat.completions.create(model="llama3.2:3b", messages=HI,
                                                 temperature=7)  # fmt: skip
    assert unknown.value.code == "model_not_found" and "no-such:1b" in unknown.value.message
    assert several.value.param == "n" and "n=2" in several.value.message
    assert remote.value.param == "messages[0].content[0]"
    assert typed.value.param == "temperature" and typed.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/v1/nothing", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("POST", "/v1/chat/completions", b"{", 400),
        ("POST", "/v1/chat/completions", b'{"model": "x", "messages": "' + b"a" * 9_000_000 + b'"}',
         413),
    ],
)  # fmt: skip
async def test_bad_requests_get_openai_s_error_shape(gateway, method, path, body, status) -> None:
    _, url = gateway
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        resp = await http.request(method, path, content=body)
    assert resp.status_code == status
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


async def test_the_sse_stream_byte_by_byte(gateway) -> None:
    _, url = gateway
    body = {"model": "llama3.2:3b", "messages": HI, "stream": True, "max_tokens": 4}
    async with (
        httpx.AsyncClient(base_url=url) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.headers["content-type"] == "text/event-stream"
        assert resp.headers["x-request-id"]
        raw = b"".join([part async for part in resp.aiter_raw()])
    events = raw.split(b"\n\n")
    assert events[-1] == b"" and events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") for e in events[:-2])
    objects = [json.loads(e[len(b"data: ") :]) for e in events[:-2]]
    assert objects[0]["choices"][0]["delta"]["role"] == "assistant"
    assert objects[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                         "finish_reason": "length"}  # fmt: skip


async def test_rate_limited_is_429_with_both_retry_headers_and_the_client_retries(gateway) -> None:
    """`qwen2.5:7b` takes 60 requests a minute, all at once if they come at once, then
    one a second: the 61st at once is a 429 whose `retry-after-ms` the client obeys when
    it may retry, and then it is served."""
    _, url = gateway
    async with connect(url, max_retries=0) as eager, connect(url, max_retries=3) as patient:
        await asyncio.gather(*(
            eager.chat.completions.create(model="qwen2.5:7b", messages=HI, max_tokens=1)
            for _ in range(60)
        ))  # fmt: skip
        with pytest.raises(openai.RateLimitError) as refused:
            await eager.chat.completions.create(model="qwen2.5:7b", messages=HI, max_tokens=2)
        served = await patient.chat.completions.create(model="qwen2.5:7b", messages=HI,
                                                       max_tokens=2)  # fmt: skip
    headers = refused.value.response.headers
    assert 0 < int(headers["retry-after-ms"]) <= 1000 and int(headers["retry-after"]) >= 1
    assert refused.value.code == "rate_limited" and refused.value.type == "rate_limit_error"
    assert served.choices[0].message.content


async def test_overloaded_is_503_which_the_client_retries() -> None:
    """The OpenAI family's 503 (an overloaded fleet) on a real socket: the client waits
    the `retry-after-ms` it gives and tries again."""
    calls = 0

    async def busy_once(req: Request):
        nonlocal calls
        calls += 1
        if calls <= 2:  # the eager client's one try and the patient one's first
            raise Overloaded("every slot is busy", retry_after_ms=50)
        return json_reply(200, {"object": "list", "data": []})

    app = App([Family("/v1/", {("GET", "/v1/models"): busy_once}, routes.error_reply)], 1024)
    server = HttpServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        async with connect(server.url, max_retries=0) as eager:
            with pytest.raises(openai.InternalServerError) as refused:
                await eager.models.list()
        async with connect(server.url, max_retries=2) as patient:
            listed = [m async for m in await patient.models.list()]
    finally:
        await server.stop(1.0)
    assert refused.value.status_code == 503 and refused.value.code == "overloaded"
    assert refused.value.response.headers["retry-after-ms"] == "50"
    assert listed == [] and calls == 3


async def test_a_client_that_leaves_an_sse_stream_stops_its_generation(gateway) -> None:
    sim, url = gateway
    body = {"model": "llama3.2:3b", "messages": HI, "stream": True, "max_tokens": 5000}
    async with httpx.AsyncClient(base_url=url) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for _ in resp.aiter_lines():
                break
        await sim.engine.wait_for(lambda s: s.in_flight == 1, timeout=5)
    await sim.engine.wait_for(lambda s: s.in_flight == 0, timeout=10)


async def test_the_sync_client_in_a_thread(gateway) -> None:
    _, url = gateway

    def chat() -> str:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused") as client:
            reply = client.chat.completions.create(model="fast", messages=HI, max_tokens=3)
        return reply.choices[0].message.content or ""

    assert await asyncio.to_thread(chat)
