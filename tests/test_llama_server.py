"""The engine fixture against a real llama-server: it starts, streams, cancels, crashes and
comes back, and the tiny model's answers have the shapes tests of the backends rely on."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._engine_fixtures import LlamaServer, LlamaServerError

# Longer than any test waits: a slot holds 4,096 tokens, several seconds of generation.
LONG = 4000

PERSON = {
    "type": "object",
    "properties": {
        # Bounded, so the answer ends: the model closes a free string only by chance.
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer"},
    },
    "required": ["name", "age"],
}


def chat(max_tokens: int, **extra: Any) -> dict[str, Any]:
    """A streamed chat request with a usage chunk at the end."""
    return {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }


def events(lines: Iterator[str]) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream."""
    for line in lines:
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def busy(http: httpx.Client) -> bool:
    return any(slot["is_processing"] for slot in http.get("/slots").json())


@pytest.fixture
def http(llama_server: LlamaServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=llama_server.url, timeout=10.0) as client:
        yield client


def test_health_answers_after_start(http: httpx.Client) -> None:
    """`start()` returns only once `/health` says ok."""
    resp = http.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_metrics_and_slots_are_exposed(http: httpx.Client, llama_server: LlamaServer) -> None:
    """The flags expose Prometheus metrics and one entry per slot, each of its share of -c."""
    assert "llamacpp:requests_processing" in http.get("/metrics").text
    slots = http.get("/slots").json()
    per_slot = llama_server.context // llama_server.slots
    assert [(s["id"], s["n_ctx"]) for s in slots] == [(0, per_slot), (1, per_slot)]


def test_the_model_is_listed_under_its_alias(http: httpx.Client, llama_server: LlamaServer) -> None:
    """/v1/models names the model by the alias, not by its file's temporary path."""
    assert [m["id"] for m in http.get("/v1/models").json()["data"]] == [llama_server.model]


def test_streamed_chat_ends_with_usage_timings_and_done(http: httpx.Client) -> None:
    """A streamed chat: role first, one content delta per token, the finish reason, then a
    usage chunk with no choices that also carries llama-server's `timings`, then [DONE]."""
    with http.stream("POST", "/v1/chat/completions", json=chat(8)) as resp:
        assert resp.status_code == 200
        payloads = list(events(resp.iter_lines()))
    assert payloads[-1] == "[DONE]"
    first, *middle, finish, usage = [json.loads(p) for p in payloads[:-1]]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert all(c["choices"][0]["delta"].get("content") for c in middle)
    assert finish["choices"] == [{"finish_reason": "length", "index": 0, "delta": {}}]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 8
    assert usage["timings"]["predicted_n"] == 8
    assert usage["timings"]["predicted_per_second"] > 0


def test_json_schema_answers_validate(http: httpx.Client) -> None:
    """`response_format: json_schema` holds the random model to the schema, and a bounded
    string lets every answer end well inside its token budget."""
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    for i in range(5):
        body = {
            "messages": [{"role": "user", "content": f"person {i}"}],
            "max_tokens": 200,
            "response_format": response_format,
        }
        answer = http.post("/v1/chat/completions", json=body).json()
        assert answer["choices"][0]["finish_reason"] == "stop", answer
        person = json.loads(answer["choices"][0]["message"]["content"])
        assert set(person) == {"name", "age"}
        assert isinstance(person["name"], str) and len(person["name"]) <= 8
        assert isinstance(person["age"], int)


def test_closing_the_stream_frees_the_slot(http: httpx.Client) -> None:
    """A slot is processing while a long answer streams and free again within a second of
    the client closing its connection: llama-server cancels on disconnect."""
    with http.stream("POST", "/v1/chat/completions", json=chat(LONG)) as resp:
        stream = events(resp.iter_lines())
        # The role chunk may come before a slot takes the task; a token comes from one.
        next(stream), next(stream)
        assert busy(http)
    deadline = time.monotonic() + 1.0
    while busy(http):
        assert time.monotonic() < deadline, "slot still processing 1 s after the client left"


def test_kill_mid_stream_breaks_the_stream(http: httpx.Client, llama_server: LlamaServer) -> None:
    """SIGKILL mid-answer: the client's read fails (chunked body cut short), no [DONE]."""
    seen: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"),
        http.stream("POST", "/v1/chat/completions", json=chat(LONG)) as resp,
    ):
        for payload in events(resp.iter_lines()):
            seen.append(payload)
            if len(seen) == 3:
                llama_server.kill()
    assert "[DONE]" not in seen
    assert not llama_server.running
    with pytest.raises(httpx.ConnectError):
        http.get("/health")


def test_restart_serves_again_on_the_same_url(
    http: httpx.Client, llama_server: LlamaServer
) -> None:
    """After a crash, `restart()` brings the server back where clients already point."""
    url = llama_server.url
    llama_server.kill()
    llama_server.restart()
    assert llama_server.url == url
    with http.stream("POST", "/v1/chat/completions", json=chat(4)) as resp:
        assert list(events(resp.iter_lines()))[-1] == "[DONE]"


def test_a_server_that_cannot_start_says_why(llama_binary: Path, tmp_path: Path) -> None:
    """A model llama-server cannot load fails `start()` at once with the server's own words."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf")
    server = LlamaServer(llama_binary, broken, tmp_path / "llama-server.log")
    with pytest.raises(LlamaServerError, match="exited with code") as excinfo:
        server.start()
    assert "failed to load model" in str(excinfo.value)
    assert not server.running


def test_a_port_taken_by_another_server_is_not_mistaken_for_ours(
    llama_binary: Path, tiny_gguf: Path, tmp_path: Path, llama_server: LlamaServer
) -> None:
    """Another llama-server's 200 on the port does not pass for this one's health."""
    model = tmp_path / "other.gguf"
    shutil.copy(tiny_gguf, model)
    server = LlamaServer(llama_binary, model, tmp_path / "other.log", port=llama_server.port)
    with pytest.raises(LlamaServerError, match="another llama-server"):
        server.start()
    assert not server.running
    assert llama_server.running
