"""The HTTP gateway: Ollama's own client, unchanged, against the fleet; the NDJSON framing
byte by byte; errors in Ollama's shape; a client that leaves stops its generation."""

from __future__ import annotations

import asyncio
import json

import httpx
import ollama
import pytest
import structlog

from actors.gateway.http import App, Family, Request, Stream
from actors.gateway.ollama import error_reply
from actors.gateway.server import HttpServer

MODELS = ["llama3.2:3b", "qwen2.5:7b", "nomic-embed-text"]


@pytest.fixture
async def gateway(sim_factory, stack_factory):
    """A router, an executor, the monitor and the gateway (any free port); one host."""
    sim = await sim_factory(models=MODELS, tokens_per_second=200)
    stack = await stack_factory(
        [sim.url], actors=("router", "executor", "health", "gateway"), gateway={"port": 0}
    )
    assert stack.gateway is not None
    return sim, stack.gateway.url


async def test_the_ollama_client_generates_chats_and_embeds(gateway) -> None:
    _, url = gateway
    async with ollama.AsyncClient(host=url) as client:
        await _generate_chat_embed(client)


async def _generate_chat_embed(client: ollama.AsyncClient) -> None:
    result = await client.generate("llama3.2:3b", "Why is the sky blue?",
                                   options={"num_predict": 12})  # fmt: skip
    assert result.done and result.response and result.eval_count == 12
    parts = [p async for p in await client.chat(
        "qwen2.5:7b", [{"role": "user", "content": "hi"}], stream=True,
        options={"num_predict": 8},
    )]  # fmt: skip
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].eval_count == 8
    assert "".join(p.message.content for p in parts)
    vectors = await client.embed("nomic-embed-text", ["a", "b"])
    assert len(vectors.embeddings) == 2 and len(vectors.embeddings[0]) > 0


async def test_the_sync_client_lists_shows_and_streams(gateway) -> None:
    """The blocking client, in a thread (the gateway serves on this test's loop)."""
    _, url = gateway
    with ollama.Client(host=url) as client:
        await asyncio.to_thread(_list_show_stream, client)


def _list_show_stream(client: ollama.Client) -> None:
    names = {m.model for m in client.list().models}
    assert {"llama3.2:3b", "qwen2.5:7b", "nomic-embed-text:latest"} <= names
    assert client.show("llama3.2:3b").modelfile is not None
    assert isinstance(client.ps().models, list)
    chunks = list(client.generate("llama3.2:3b", "count", stream=True,
                                  options={"num_predict": 5}))  # fmt: skip
    assert chunks[-1].done and chunks[-1].done_reason == "length"
    assert "".join(c.response for c in chunks)


async def test_an_unknown_model_is_ollama_s_404(gateway) -> None:
    _, url = gateway
    async with ollama.AsyncClient(host=url) as client:
        with pytest.raises(ollama.ResponseError) as caught:
            await client.generate("no-such:1b", "hi")
    assert caught.value.status_code == 404
    assert caught.value.error == 'model "no-such:1b" not found, try pulling it first'


async def test_the_ndjson_stream_byte_by_byte(gateway) -> None:
    """One JSON object a line, `done: false` until the last, which has the figures; the
    request id comes back."""
    _, url = gateway
    async with httpx.AsyncClient(base_url=url) as http:
        body = {"model": "llama3.2:3b", "prompt": "hi", "options": {"num_predict": 6}}
        async with http.stream("POST", "/api/generate", json=body) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "application/x-ndjson"
            assert resp.headers["x-request-id"]
            raw = b"".join([part async for part in resp.aiter_raw()])
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and all(lines[:-1])
    objects = [json.loads(line) for line in lines[:-1]]
    assert [o["done"] for o in objects] == [False] * (len(objects) - 1) + [True]
    last = objects[-1]
    assert last["eval_count"] == 6 and last["done_reason"] == "length"
    assert last["model"] == "llama3.2:3b" and last["created_at"].endswith("Z")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("GET", "/api/nothing", None, 404, None),
        ("GET", "/api/generate", None, 405, None),
        ("POST", "/api/generate", b"{", 400, "invalid JSON"),
        ("POST", "/api/chat", b'{"model": "llama3.2:3b", "messages": "hi"}', 400, "messages"),
        ("POST", "/api/generate", b'{"model": "x", "prompt": "' + b"a" * 9_000_000 + b'"}', 413,
         "over"),
    ],
)  # fmt: skip
async def test_bad_requests_get_ollama_s_errors_at_once(
    gateway, method: str, path: str, body: bytes | None, status: int, says: str | None
) -> None:
    _, url = gateway
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        resp = await http.request(method, path, content=body)
    assert resp.status_code == status
    if says is not None:
        assert says in resp.json()["error"]


async def test_root_and_version(gateway) -> None:
    _, url = gateway
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/")).text == "Ollama is running"
        assert (await http.head("/")).status_code == 200
        assert (await http.get("/api/version")).json()["version"]


async def test_a_client_that_leaves_stops_its_generation(gateway) -> None:
    """The client reads one line of a 5,000-token answer and closes the connection: the
    request is cancelled on the fleet, and the host stops generating."""
    sim, url = gateway
    async with httpx.AsyncClient(base_url=url) as http:
        body = {"model": "llama3.2:3b", "prompt": "long", "options": {"num_predict": 5000}}
        async with http.stream("POST", "/api/generate", json=body) as resp:
            async for _ in resp.aiter_lines():
                break
        await sim.engine.wait_for(lambda s: s.in_flight == 1, timeout=5)
    await sim.engine.wait_for(lambda s: s.in_flight == 0, timeout=10)


async def test_pull_copy_and_delete_across_two_hosts(sim_factory, stack_factory) -> None:
    """The official client pulls onto both hosts with progress summed over them and a
    final success; copy and delete act on every host that has the model."""
    sims = [await sim_factory(models=MODELS) for _ in range(2)]
    stack = await stack_factory([s.url for s in sims], actors=("router", "executor", "health",
                                                               "gateway"), gateway={"port": 0})  # fmt: skip
    assert stack.gateway is not None
    async with ollama.AsyncClient(host=stack.gateway.url) as client:
        progress = [p async for p in await client.pull("phi3:mini", stream=True)]
        assert (await client.pull("phi3:mini")).status == "success"  # already there: at once
        await client.copy("phi3:mini", "my-phi:latest")
        copied = {m.model for m in (await client.list()).models}
        await client.delete("phi3:mini")
        left = {m.model for m in (await client.list()).models}
        with pytest.raises(ollama.ResponseError) as missing:
            await client.delete("phi3:mini")
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    layers = [p for p in progress if p.digest]
    assert layers and all(p.total for p in layers)
    largest = max(p.total for p in layers)
    assert any(p.completed == largest for p in layers)  # both hosts' bytes, together
    for sim in sims:
        assert {"phi3:mini", "my-phi:latest"} & set(sim.engine.models) == {"my-phi:latest"}
    assert {"phi3:mini", "my-phi:latest"} <= copied and "phi3:mini" not in left
    assert missing.value.status_code == 404


async def test_priority_and_deadline_as_headers(gateway) -> None:
    """`X-Ollamesh-Deadline-Ms` bounds a request as `deadline_ms` does; bad values of
    either header are 400s that say what is expected."""
    _, url = gateway
    long = {"model": "llama3.2:3b", "prompt": "long", "stream": False,
            "options": {"num_predict": 5000}}  # fmt: skip
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        late = await http.post("/api/generate", json=long,
                               headers={"X-Ollamesh-Deadline-Ms": "300"})  # fmt: skip
        batch = await http.post("/api/generate", headers={"X-Ollamesh-Priority": "batch"},
                                json={**long, "options": {"num_predict": 3}})  # fmt: skip
        bad = [
            await http.post("/api/generate", json=long, headers={name: value})
            for name, value in (("X-Ollamesh-Priority", "urgent"),
                                ("X-Ollamesh-Deadline-Ms", "soon"))
        ]  # fmt: skip
    assert late.status_code == 500 and "in time" in late.json()["error"]
    assert batch.status_code == 200 and batch.json()["eval_count"] == 3
    assert [r.status_code for r in bad] == [400, 400]
    assert "interactive or batch" in bad[0].json()["error"]
    assert "milliseconds" in bad[1].json()["error"]


async def test_metrics_per_route_and_status(sim_factory, stack_factory) -> None:
    """Each answer is counted by its route's pattern (`unmatched` for none), method and
    status; the requests in flight come back to 0."""
    sim = await sim_factory(models=MODELS)
    stack = await stack_factory(
        [sim.url], actors=("router", "executor", "health", "gateway"), gateway={"port": 0}
    )
    assert stack.gateway is not None and stack.metrics.url is not None
    body = {"model": "llama3.2:3b", "prompt": "hi", "options": {"num_predict": 2}}
    async with httpx.AsyncClient(base_url=stack.gateway.url) as http:
        for _ in range(2):
            assert (await http.post("/api/generate", json=body)).status_code == 200
        assert (await http.get("/nowhere/at/all")).status_code == 404
        assert (await http.get("/v1/models/qwen2.5:7b")).status_code == 200
        scraped = (await http.get(stack.metrics.url)).text
    counted = {
        '{method="POST",route="/api/generate",status="200"} 2.0',
        '{method="GET",route="unmatched",status="404"} 1.0',
        '{method="GET",route="/v1/models/*",status="200"} 1.0',
    }
    for labels in counted:
        assert f"ollamesh_http_requests_total{labels}" in scraped, scraped
    assert 'ollamesh_http_response_start_seconds_count{route="/api/generate"} 2.0' in scraped
    assert 'ollamesh_http_in_flight{route="/api/generate"} 0.0' in scraped


async def test_a_body_that_does_not_arrive_in_time_is_408(sim_factory, stack_factory) -> None:
    """A client that sends its headers and part of its body, then stalls, gets Ollama's
    error with 408 once `gateway.body_timeout_s` is over, not a connection held open."""
    sim = await sim_factory(models=MODELS)
    stack = await stack_factory([sim.url], actors=("router", "executor", "gateway"),
                                gateway={"port": 0, "body_timeout_s": 0.3})  # fmt: skip
    assert stack.gateway is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.gateway.http.port)
    writer.write(b"POST /api/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 100\r\n\r\n" + b'{"model": "llama')  # fmt: skip
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))  # fmt: skip
        body = await reader.readexactly(length)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body) == {"error": "the request body did not arrive within 0.3s"}


async def test_a_bug_under_a_stream_is_logged_and_the_response_cut() -> None:
    """A stream whose lines raise something no route expects: the client gets what was
    written and an end, and the log has the error with its traceback."""

    async def lines():
        yield b'{"a":1}\n'
        raise RuntimeError("a bug under the stream")

    async def broken(req: Request) -> Stream:
        return Stream(200, lines(), "application/x-ndjson")

    app = App([Family("/", {("GET", "/s"): broken}, error_reply)], 1024)
    server = HttpServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        got: list[str] = []
        with structlog.testing.capture_logs() as logs:
            async with httpx.AsyncClient(base_url=server.url) as http:
                with pytest.raises(httpx.RemoteProtocolError):  # the body ended unfinished
                    async with http.stream("GET", "/s") as resp:
                        async for line in resp.aiter_lines():
                            got.append(line)
    finally:
        await server.stop(1.0)
    assert got == ['{"a":1}']
    failed = [e for e in logs if e["event"] == "stream_failed"]
    assert len(failed) == 1 and isinstance(failed[0]["exc_info"], RuntimeError)
