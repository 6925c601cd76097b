"""The Ollama simulator over real HTTP: its API shapes, determinism, limits, faults, life."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
import pytest_asyncio

import actors.simulator as simulator
from actors.simulator import BUSY_ERROR, Engine, Fault, SimulatorServer, parse_keep_alive
from actors.simulator.catalogue import canonical_name
from tests._sim_fixtures import SIM_MODELS

GEN = "llama3.2:3b"
ASK = {"model": GEN, "prompt": "Why is the sky blue?"}
CHAT = {"model": "qwen2.5:7b", "messages": [{"role": "user", "content": "Name a river."}]}
STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration")
STATS += ("eval_count", "eval_duration")
LONG = {**ASK, "options": {"num_predict": 1000}}
TWENTY = {**ASK, "options": {"num_predict": 20}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(40))).decode()


def connect(sim: SimulatorServer) -> httpx.AsyncClient:
    """An HTTP client for `sim` (plain HTTP: no certificates to load, which takes 20 ms)."""
    return httpx.AsyncClient(base_url=sim.url, timeout=10.0, verify=False)


@pytest_asyncio.fixture(loop_scope="session")
async def http(sim: SimulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the `sim` host."""
    async with connect(sim) as client:
        yield client


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def ndjson(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every line of a streamed answer, each parsed on its own."""
    async with http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) async for line in resp.aiter_lines()]  # a blank line fails


def text(lines: list[dict[str, Any]]) -> str:
    """The answer a stream spells, generate or chat."""
    return "".join(x.get("response") or x.get("message", {}).get("content", "") for x in lines)


async def whole(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """A non-streamed answer."""
    resp = await http.post(path, json={**body, "stream": False})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    return resp.json()


def answer(reply: dict[str, Any]) -> str:
    return reply.get("response") or reply["message"]["content"]


# -- the contract -------------------------------------------------------------------------


def test_the_package_exports_exactly_its_contract() -> None:
    """The public names are a deliberate list; changing it is a visible decision."""
    assert sorted(simulator.__all__) == sorted(
        ["BUSY_ERROR", "DEFAULT_MODELS", "VERSION", "Busy", "Engine", "Fault", "FaultKind",
         "Loaded", "ModelInfo", "Script", "SimulatorServer", "Stats", "build_app", "canonical_name",
         "describe", "parse_keep_alive", "run_forever"]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 300.0), (0, 0.0), (30, 30.0), (2.5, 2.5), ("0", 0.0), ("5m", 300.0), ("1h30m", 5400.0),
     ("250ms", 0.25), ("1.5s", 1.5), (-1, math.inf), ("-1m", math.inf)],
    ids=lambda v: repr(v),
)  # fmt: skip
def test_keep_alive_reads_like_ollamas(value: object, seconds: float) -> None:
    """Numbers are seconds, strings Go durations, negatives forever, None the default."""
    assert parse_keep_alive(value, 300.0) == seconds


@pytest.mark.parametrize("value", ["5", "", "five", "5x"], ids=repr)
def test_keep_alive_rejects_what_go_rejects(value: str) -> None:
    """A duration without a unit, or not a duration at all, is an error in Go's words."""
    with pytest.raises(ValueError, match=r"^time: (missing unit in|invalid) duration"):
        parse_keep_alive(value, 300.0)


def test_model_names_default_to_the_latest_tag() -> None:
    """`nomic-embed-text` and `NOMIC-embed-text:latest` are the same model."""
    assert canonical_name("NOMIC-embed-text") == "nomic-embed-text:latest"
    assert canonical_name("library/x:7b") == "library/x:7b"
    assert Engine(["nomic-embed-text"]).find("nomic-embed-text:latest") is not None


def test_a_fault_with_a_bad_count_is_refused() -> None:
    """A fault must strike at least once, after a non-negative number of tokens."""
    with pytest.raises(ValueError, match="count"):
        Fault(kind="busy", count=0)
    with pytest.raises(ValueError, match="negative"):
        Fault(kind="stall", tokens=-1)


async def test_slots_are_handed_out_in_arrival_order() -> None:
    """With one slot, waiting requests get it first come, first served."""
    engine = Engine([GEN], num_parallel=1)
    info = engine.find(GEN)
    assert info is not None
    order: list[int] = []
    gate = asyncio.Event()

    async def use(i: int) -> None:
        async with engine.slot(info):
            order.append(i)
            await gate.wait()

    first = asyncio.create_task(use(0))
    await engine.wait_for(lambda s: s.in_flight == 1)
    rest = [asyncio.create_task(use(i)) for i in (1, 2, 3)]
    await engine.wait_for(lambda s: s.queued == 3)
    gate.set()
    await asyncio.gather(first, *rest)
    assert order == [0, 1, 2, 3]
    assert engine.stats.in_flight == engine.stats.queued == 0


async def test_leaving_the_queue_as_a_slot_frees_up_passes_it_on() -> None:
    """A waiter cancelled just before its turn neither breaks the queue nor keeps a slot."""
    engine = Engine([GEN], num_parallel=1)
    info = engine.find(GEN)
    assert info is not None
    held = engine.slot(info)
    await held.__aenter__()

    async def wait() -> str:
        async with engine.slot(info):
            return "served"

    leaving, staying = asyncio.create_task(wait()), asyncio.create_task(wait())
    await engine.wait_for(lambda s: s.queued == 2)
    leaving.cancel()
    await held.__aexit__(None, None, None)  # releases before `leaving` has run again
    assert await staying == "served"
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await engine.wait_idle(timeout=1)


# -- health, catalogue ----------------------------------------------------------------------


async def test_root_and_version_answer_like_ollama(http: httpx.AsyncClient) -> None:
    """`/` says Ollama is running (GET and HEAD); `/api/version` gives a version string."""
    root = await http.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert root.headers["content-type"].startswith("text/plain")
    assert (await http.head("/")).status_code == 200
    assert (await http.get("/api/version")).json() == {"version": simulator.VERSION}


async def test_tags_lists_every_model_with_its_details(http: httpx.AsyncClient) -> None:
    """Each model has name, model, modified_at, size, a sha256 digest and Ollama's details."""
    models = (await http.get("/api/tags")).json()["models"]
    assert [m["name"] for m in models] == ["llama3.2:3b", "qwen2.5:7b", "nomic-embed-text:latest"]
    for m in models:
        assert m["model"] == m["name"] and m["size"] > 0 and len(m["digest"]) == 64
        datetime.fromisoformat(m["modified_at"])
        assert set(m["details"]) == {
            "parent_model", "format", "family", "families", "parameter_size", "quantization_level"
        }  # fmt: skip
    assert models[0]["details"]["family"] == "llama"
    assert models[0]["details"]["parameter_size"] == "3.2B"


async def test_show_describes_capabilities(sim_factory) -> None:
    """Completion models complete, embedding models embed, vision models also see."""
    sim = await sim_factory(models=[GEN, "nomic-embed-text", "llava:7b"])
    async with connect(sim) as http:
        shown = {}
        for name in (GEN, "nomic-embed-text", "llava:7b"):
            shown[name] = (await http.post("/api/show", json={"model": name})).json()
        missing = await http.post("/api/show", json={"model": "nope"})
        nameless = await http.post("/api/show", json={})
    assert shown[GEN]["capabilities"] == ["completion", "tools"]
    assert shown["nomic-embed-text"]["capabilities"] == ["embedding"]
    assert "vision" in shown["llava:7b"]["capabilities"]
    info = shown[GEN]
    assert info["model_info"]["llama.context_length"] == 131072
    assert info["details"]["quantization_level"] == "Q4_K_M"
    assert "FROM" in info["modelfile"] and "{{ .Prompt }}" in info["template"]
    assert "stop" in info["parameters"]
    datetime.fromisoformat(info["modified_at"])
    assert (missing.status_code, missing.json()) == (404, {"error": "model 'nope' not found"})
    assert (nameless.status_code, nameless.json()) == (400, {"error": "model is required"})


# -- generate and chat ----------------------------------------------------------------------


async def test_a_generate_stream_is_ndjson_ending_in_stats(http: httpx.AsyncClient) -> None:
    """Token lines with `done: false`, then one `done: true` line with every statistic."""
    lines = await ndjson(http, "/api/generate", ASK)
    *tokens, last = lines
    assert len(tokens) >= 8
    for line in tokens:
        assert line["model"] == GEN and line["done"] is False and line["response"]
        datetime.fromisoformat(line["created_at"])
    assert last["done"] is True and last["done_reason"] == "stop" and last["response"] == ""
    assert all(isinstance(last[k], int) and last[k] > 0 for k in STATS)
    assert last["eval_count"] == len(tokens)
    assert last["context"] and all(isinstance(t, int) for t in last["context"])


async def test_a_chat_stream_carries_assistant_messages(http: httpx.AsyncClient) -> None:
    """Chat lines carry `message: {role: assistant, content}` and no `context`."""
    *tokens, last = await ndjson(http, "/api/chat", CHAT)
    assert all(t["message"]["role"] == "assistant" and t["message"]["content"] for t in tokens)
    assert last["done"] is True and last["message"] == {"role": "assistant", "content": ""}
    assert "context" not in last and all(last[k] > 0 for k in STATS)


async def test_lines_are_written_one_token_at_a_time(sim_factory) -> None:
    """Paced at 50 tokens/s, the first line arrives long before the last."""
    sim = await sim_factory(models=[GEN], tokens_per_second=50)
    async with connect(sim) as http:
        started = time.perf_counter()
        arrivals = []
        ten = {**ASK, "options": {"num_predict": 10}}
        async with http.stream("POST", "/api/generate", json=ten) as resp:
            async for _ in resp.aiter_lines():
                arrivals.append(time.perf_counter() - started)
    assert len(arrivals) == 11
    assert arrivals[-1] >= 0.18  # ten tokens at 20 ms each
    assert arrivals[-1] - arrivals[0] >= 0.15


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
async def test_stream_false_gives_the_same_answer_whole(http: httpx.AsyncClient, path: str) -> None:
    """One JSON object with the whole text, equal to the streamed answer for the same seed."""
    body = {**(ASK if path.endswith("generate") else CHAT), "options": {"seed": 11}}
    streamed = await ndjson(http, path, body)
    reply = await whole(http, path, body)
    assert answer(reply) == text(streamed) != ""
    assert reply["done"] is True and reply["eval_count"] == streamed[-1]["eval_count"]


async def test_the_same_seed_gives_the_same_answer(http: httpx.AsyncClient) -> None:
    """Same model, prompt, system and seed: the same text; another seed: another text."""
    brief = {**ASK, "system": "Be brief."}
    one = await whole(http, "/api/generate", {**brief, "options": {"seed": 5}})
    again = await whole(http, "/api/generate", {**brief, "options": {"seed": 5}})
    other = await whole(http, "/api/generate", {**brief, "options": {"seed": 6}})
    unprompted = await whole(http, "/api/generate", {**ASK, "options": {"seed": 5}})
    assert answer(one) == answer(again)
    assert answer(other) != answer(one)
    assert answer(unprompted) != answer(one)  # the system prompt is part of the input


async def test_a_chat_ending_with_the_assistant_s_message_goes_on_from_it(
    http: httpx.AsyncClient,
) -> None:
    """As Ollama does, a final assistant message is continued, not answered: at
    temperature 0 its own beginning goes on as the rest of the same answer, `num_predict`
    counting from there; a generate is answered as the chat turn its template renders."""
    cold = {**CHAT, "options": {"temperature": 0, "num_predict": 30}}
    tokens = [x["message"]["content"] for x in (await ndjson(http, "/api/chat", cold))[:-1]]
    begun = "".join(tokens[:12])
    rest = {**cold, "messages": [*CHAT["messages"], {"role": "assistant", "content": begun}]}
    rest["options"] = {"temperature": 0, "num_predict": 18}
    lines = await ndjson(http, "/api/chat", rest)
    assert text(lines) == "".join(tokens[12:]) and lines[-1]["eval_count"] == 18
    other = {**rest, "messages": [*CHAT["messages"], {"role": "assistant", "content": "Zebra"}]}
    assert text(await ndjson(http, "/api/chat", other)) != "".join(tokens[12:])
    asked = {"model": CHAT["model"], "prompt": "Name a river.", "options": cold["options"]}
    assert text(await ndjson(http, "/api/generate", asked)) == "".join(tokens)


async def test_temperature_zero_repeats_without_a_seed(http: httpx.AsyncClient) -> None:
    """Greedy decoding repeats itself; sampling without a seed does not."""
    cold = {**CHAT, "options": {"temperature": 0}}
    greedy = [answer(await whole(http, "/api/chat", cold)) for _ in range(2)]
    sampled = [answer(await whole(http, "/api/chat", CHAT)) for _ in range(3)]
    assert greedy[0] == greedy[1]
    assert len(set(sampled)) == 3


async def test_num_predict_cuts_the_answer_for_length(http: httpx.AsyncClient) -> None:
    """`num_predict: 7` gives exactly seven tokens and `done_reason: length`."""
    lines = await ndjson(http, "/api/generate", {**ASK, "options": {"num_predict": 7, "seed": 3}})
    assert len(lines) == 8 and lines[-1]["eval_count"] == 7
    assert lines[-1]["done_reason"] == "length"
    natural = await whole(http, "/api/generate", {**ASK, "options": {"seed": 3}})
    assert natural["done_reason"] == "stop" and 8 <= natural["eval_count"] <= 48
    assert answer(natural).startswith(text(lines).rstrip("."))


async def test_a_stop_string_ends_the_answer_before_it(http: httpx.AsyncClient) -> None:
    """The answer is cut just before the first stop string, which is never sent."""
    body = {**ASK, "options": {"seed": 9, "num_predict": 30}}
    full = text(await ndjson(http, "/api/generate", body))
    stop = full[len(full) // 2 : len(full) // 2 + 4]
    cut = {**body, "options": {**body["options"], "stop": ["zzz", stop]}}
    lines = await ndjson(http, "/api/generate", cut)
    assert text(lines) == full[: full.index(stop)]
    assert lines[-1]["done_reason"] == "stop"
    assert answer(await whole(http, "/api/generate", cut)) == full[: full.index(stop)]


async def test_format_json_and_schemas_give_parseable_json(http: httpx.AsyncClient) -> None:
    """`format: json` gives a JSON object; a schema gives its keys with the declared types."""
    loose = json.loads(answer(await whole(http, "/api/generate", {**ASK, "format": "json"})))
    assert isinstance(loose, dict) and loose
    schema = {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "available": {"type": "boolean"},
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "home": {"$ref": "#/$defs/Place"},
            "size": {"enum": ["s", "m", "l"]},
        },
        "required": ["age", "available"],
        "$defs": {"Place": {"type": "object", "properties": {"lat": {"type": "number"}}}},
    }
    for path, body in (("/api/generate", ASK), ("/api/chat", CHAT)):
        lines = await ndjson(http, path, {**body, "format": schema})
        doc = json.loads(text(lines))
        assert set(doc) == set(schema["properties"])
        assert isinstance(doc["age"], int) and 18 <= doc["age"] <= 99
        assert isinstance(doc["available"], bool) and isinstance(doc["name"], str)
        assert all(isinstance(t, str) for t in doc["tags"]) and doc["size"] in ("s", "m", "l")
        assert isinstance(doc["home"]["lat"], float)
        assert len(lines) > 3  # streamed in pieces, not as one line


async def test_a_prompt_is_counted_in_tokens(http: httpx.AsyncClient) -> None:
    """A longer prompt costs more prompt tokens."""
    short = await whole(http, "/api/generate", {**ASK, "prompt": "hi"})
    long = await whole(http, "/api/generate", {**ASK, "prompt": "hi " * 200})
    assert long["prompt_eval_count"] > short["prompt_eval_count"] + 100


async def test_thinking_models_think_when_asked(sim_factory) -> None:
    """A thinking model streams `thinking` before content; others refuse `think` with 400."""
    sim = await sim_factory(models=[GEN, "qwen3:8b"])
    async with connect(sim) as http:
        body = {**CHAT, "model": "qwen3:8b", "think": True, "options": {"seed": 4}}
        lines = await ndjson(http, "/api/chat", body)
        reply = await whole(http, "/api/chat", body)
        plain = await whole(http, "/api/chat", {**body, "think": False})
        refused = await http.post("/api/chat", json={**CHAT, "model": GEN, "think": True})
        generated = await whole(http, "/api/generate", {**ASK, "model": "qwen3:8b", "think": True})
    thinking = [x for x in lines[:-1] if x["message"].get("thinking")]
    assert thinking and lines.index(thinking[-1]) < len(thinking) + 1  # thoughts come first
    assert all(x["message"]["content"] == "" for x in thinking)
    assert reply["message"]["thinking"] and reply["message"]["content"]
    assert "thinking" not in plain["message"]
    assert plain["message"]["content"] == reply["message"]["content"]  # thoughts come extra
    assert refused.status_code == 400
    assert refused.json() == {"error": '"llama3.2:3b" does not support thinking'}
    assert generated["thinking"] and generated["response"]


async def test_images_go_to_vision_models_only(sim_factory) -> None:
    """llava takes base64 images (and counts them); a text model fails; bad base64 is a 400."""
    sim = await sim_factory(models=[GEN, "llava:7b"])
    async with connect(sim) as http:
        seen = await whole(http, "/api/generate", {**ASK, "model": "llava:7b", "images": [PNG]})
        plain = await whole(http, "/api/generate", {**ASK, "model": "llava:7b"})
        blind = await http.post("/api/generate", json={**ASK, "images": [PNG]})
        message = {"role": "user", "content": "?", "images": ["**"]}
        broken = await http.post("/api/chat", json={"model": "llava:7b", "messages": [message]})
    assert seen["prompt_eval_count"] > plain["prompt_eval_count"] + 500
    assert blind.status_code == 500 and "image" in blind.json()["error"]
    assert broken.status_code == 400 and "base64" in broken.json()["error"]


async def test_an_empty_prompt_loads_and_keep_alive_zero_unloads(http: httpx.AsyncClient) -> None:
    """Empty prompt or messages: `done_reason: load`; with keep_alive 0: `unload`."""
    loaded = await http.post("/api/generate", json={"model": GEN})
    assert loaded.json() | {"created_at": ""} == {
        "model": GEN, "created_at": "", "response": "", "done": True, "done_reason": "load"
    }  # fmt: skip
    chat = (await http.post("/api/chat", json={"model": "qwen2.5:7b", "messages": []})).json()
    assert chat["done_reason"] == "load" and chat["message"] == {"role": "assistant", "content": ""}
    names = {m["name"] for m in (await http.get("/api/ps")).json()["models"]}
    assert names == {GEN, "qwen2.5:7b"}
    gone = (await http.post("/api/generate", json={"model": GEN, "keep_alive": 0})).json()
    assert gone["done_reason"] == "unload"
    assert [m["name"] for m in (await http.get("/api/ps")).json()["models"]] == ["qwen2.5:7b"]


async def test_ps_follows_keep_alive(sim_factory) -> None:
    """A model stays in `/api/ps` for keep_alive after its request, then leaves."""
    clock = FakeClock()
    sim = await sim_factory(engine=Engine(SIM_MODELS, clock=clock))
    async with connect(sim) as http:
        await whole(http, "/api/generate", {**ASK, "keep_alive": "1m"})
        await whole(http, "/api/chat", {**CHAT, "keep_alive": -1, "options": {"num_ctx": 8192}})
        await whole(http, "/api/embed", {"model": "nomic-embed-text", "input": "x", "keep_alive": 0})  # fmt: skip
        running = (await http.get("/api/ps")).json()["models"]
        clock.now += 61
        later = (await http.get("/api/ps")).json()["models"]
    assert [m["name"] for m in running] == ["qwen2.5:7b", GEN]  # the longest to live first
    forever, minute = (datetime.fromisoformat(m["expires_at"]) for m in running)
    left = (minute - datetime.now(UTC)).total_seconds()
    assert 50 < left <= 60 and forever.year > 2200
    assert running[0]["context_length"] == 8192 and running[1]["context_length"] == 4096
    assert running[1]["size_vram"] == running[1]["size"] > 0
    assert [m["name"] for m in later] == ["qwen2.5:7b"]


async def test_a_cold_model_takes_load_ms(sim_factory) -> None:
    """The first request waits for the load and reports it; a warm model does not."""
    sim = await sim_factory(models=[GEN], load_ms=150)
    async with connect(sim) as http:
        cold = await whole(http, "/api/generate", ASK)
        warm = await whole(http, "/api/generate", ASK)
    assert cold["load_duration"] >= 150_000_000
    assert warm["load_duration"] < 100_000_000


# -- embeddings -----------------------------------------------------------------------------


async def test_embed_gives_deterministic_unit_vectors(http: httpx.AsyncClient) -> None:
    """One vector per input, of the model's dimension, unit length, the same for the same text."""
    body = {"model": "nomic-embed-text", "input": ["a river", "a road", "a river"]}
    reply = (await http.post("/api/embed", json=body)).json()
    one = (await http.post("/api/embed", json={**body, "input": "a river"})).json()
    cut = (await http.post("/api/embed", json={**body, "dimensions": 256})).json()
    assert reply["model"] == "nomic-embed-text" and reply["prompt_eval_count"] > 0
    assert reply["total_duration"] > 0 and "load_duration" in reply
    vectors = reply["embeddings"]
    assert [len(v) for v in vectors] == [768, 768, 768]
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-9 for v in vectors)
    assert vectors[0] == vectors[2] == one["embeddings"][0] != vectors[1]
    assert len(cut["embeddings"][0]) == 256
    assert abs(math.fsum(x * x for x in cut["embeddings"][0]) - 1) < 1e-9


async def test_embed_edge_cases_and_the_legacy_endpoint(http: httpx.AsyncClient) -> None:
    """Empty input loads only; `/api/embeddings` takes `prompt`; generate refuses embedders."""
    empty = (await http.post("/api/embed", json={"model": "nomic-embed-text", "input": ""})).json()
    legacy = await http.post("/api/embeddings", json={"model": "nomic-embed-text", "prompt": "a"})
    refused = await http.post("/api/generate", json={"model": "nomic-embed-text", "prompt": "a"})
    assert empty["embeddings"] == []
    assert len(legacy.json()["embedding"]) == 768
    assert refused.status_code == 400
    assert refused.json() == {"error": '"nomic-embed-text" does not support generate'}


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/embed"])
async def test_errors_have_ollamas_status_and_shape(http: httpx.AsyncClient, path: str) -> None:
    """Bad JSON and a missing model are 400, an unknown model 404, a GET 405."""
    bad = await http.post(path, content=b"{not json")
    empty = await http.post(path, content=b"")
    nameless = await http.post(path, json={"prompt": "hi"})
    unknown = await http.post(path, json={"model": "nope:1b", "prompt": "hi", "input": "x"})
    wrong_type = await http.post(path, json={"model": GEN, "options": {"num_predict": "ten"}})
    assert bad.status_code == 400 and bad.json()["error"]
    assert empty.json() == {"error": "missing request body"}
    assert (nameless.status_code, nameless.json()) == (400, {"error": "model is required"})
    assert unknown.status_code == 404
    assert unknown.json() == {"error": 'model "nope:1b" not found, try pulling it first'}
    assert (await http.get(path)).status_code == 405
    if path != "/api/embed":
        assert wrong_type.status_code == 400 and "num_predict" in wrong_type.json()["error"]


async def test_a_bad_keep_alive_is_a_400(http: httpx.AsyncClient) -> None:
    """keep_alive "5" has no unit: Ollama refuses it in Go's words."""
    resp = await http.post("/api/generate", json={**ASK, "keep_alive": "5"})
    assert resp.status_code == 400
    assert resp.json() == {"error": 'time: missing unit in duration "5"'}


async def test_a_full_queue_answers_503(sim_factory) -> None:
    """With the slot taken and the queue full, the next request is refused with Ollama's 503."""
    sim = await sim_factory(models=[GEN], num_parallel=1, max_queue=1, tokens_per_second=20)
    async with connect(sim) as http:
        async with http.stream("POST", "/api/generate", json=LONG) as first:
            lines = first.aiter_lines()  # held: an abandoned iterator closes the response
            await anext(lines)
            short = {**ASK, "stream": False, "options": {"num_predict": 2}}
            queued = asyncio.create_task(http.post("/api/generate", json=short))
            await sim.engine.wait_for(lambda s: s.queued == 1)
            refused = await http.post("/api/generate", json=ASK)
        assert (refused.status_code, refused.json()) == (503, {"error": BUSY_ERROR})
        assert (await queued).status_code == 200  # it got the slot once the first one left
    assert sim.engine.stats.generations == 2


async def test_a_client_that_leaves_frees_its_slot(sim_factory) -> None:
    """Closing a stream mid-answer, or leaving the queue, gives the slot back at once."""
    sim = await sim_factory(models=[GEN], num_parallel=1, tokens_per_second=50)
    async with connect(sim) as http:
        async with http.stream("POST", "/api/generate", json=LONG) as resp:
            lines = resp.aiter_lines()
            await anext(lines)
            waiting = asyncio.create_task(http.post("/api/generate", json=LONG))
            await sim.engine.wait_for(lambda s: s.in_flight == 1 and s.queued == 1)
            waiting.cancel()
            await sim.engine.wait_for(lambda s: s.queued == 0)
        await sim.engine.wait_idle(timeout=5)
        reply = await whole(http, "/api/generate", {**ASK, "options": {"num_predict": 2}})
    assert reply["eval_count"] == 2


# -- faults ---------------------------------------------------------------------------------


async def test_busy_and_error_faults_refuse_at_once(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """`busy` answers 503 and `error` 500, for `count` requests, then the host serves again."""
    sim.engine.set_fault(Fault(kind="busy", count=2))
    codes = [(await http.post("/api/generate", json=ASK)).status_code for _ in range(3)]
    assert codes == [503, 503, 200]
    sim.engine.set_fault(Fault(kind="error", count=1, message="boom"))
    failed = await http.post("/api/chat", json=CHAT)
    assert (failed.status_code, failed.json()) == (500, {"error": "boom"})
    assert sim.engine.faults == []
    assert sim.engine.stats.generations == 1
    assert sim.engine.stats.faults == {"busy": 2, "error": 1}


async def test_a_fault_can_target_models(sim: SimulatorServer, http: httpx.AsyncClient) -> None:
    """A fault for qwen leaves llama alone."""
    sim.engine.set_fault(Fault(kind="busy", models=["qwen2.5:7b"]))
    assert (await http.post("/api/chat", json=CHAT)).status_code == 503
    assert (await http.post("/api/generate", json=ASK)).status_code == 200


async def test_die_after_cuts_the_connection_mid_stream(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """After N tokens the connection drops: no final line, an incomplete body."""
    sim.engine.set_fault(Fault(kind="die_after", tokens=3, count=2))
    got = []
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        async with http.stream("POST", "/api/generate", json=TWENTY) as resp:
            async for line in resp.aiter_lines():
                got.append(json.loads(line))
    assert len(got) == 3 and not any(x["done"] for x in got)
    with pytest.raises(httpx.RemoteProtocolError):  # no response at all when not streaming
        await http.post("/api/generate", json={**ASK, "stream": False})
    await sim.engine.wait_idle()
    assert (await http.post("/api/generate", json=ASK)).status_code == 200


async def test_error_after_sends_ollamas_error_line(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """After N tokens a final `{"error": ...}` line; without streaming a 500."""
    sim.engine.set_fault(Fault(kind="error_after", tokens=4, count=2))
    lines = await ndjson(http, "/api/chat", {**CHAT, "options": {"num_predict": 20}})
    assert len(lines) == 5 and set(lines[-1]) == {"error"}
    assert all(x["done"] is False for x in lines[:-1])
    failed = await http.post("/api/generate", json={**ASK, "stream": False})
    assert failed.status_code == 500 and "error" in failed.json()


async def test_a_stall_keeps_the_connection_open_and_silent(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """After N tokens nothing more comes; leaving frees the slot."""
    sim.engine.set_fault(Fault(kind="stall", tokens=2, count=1))
    async with http.stream("POST", "/api/generate", json=ASK) as resp:
        lines = resp.aiter_lines()
        assert [json.loads(await anext(lines))["done"] for _ in range(2)] == [False, False]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await anext(lines)
        assert sim.engine.stats.in_flight == 1
    await sim.engine.wait_idle()


async def test_a_slow_first_token_arrives_late(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """The first token waits `delay_ms`; the headers come with it, as Ollama sends them."""
    sim.engine.set_fault(Fault(kind="slow_first_token", delay_ms=200, count=1))
    started = time.perf_counter()
    async with http.stream("POST", "/api/generate", json=ASK) as resp:
        lines = resp.aiter_lines()
        first = await anext(lines)
        waited = time.perf_counter() - started
    assert json.loads(first)["done"] is False and waited >= 0.2
    started = time.perf_counter()
    await whole(http, "/api/generate", ASK)
    assert time.perf_counter() - started < 0.2


async def test_faults_strike_embeddings_too(sim: SimulatorServer, http: httpx.AsyncClient) -> None:
    """An embed request meets busy, error_after (500) and die_after (no response)."""
    body = {"model": "nomic-embed-text", "input": "x"}
    for kind, expected in (("busy", 503), ("error", 500), ("error_after", 500)):
        sim.engine.set_fault(Fault(kind=kind, count=1))  # type: ignore[arg-type]
        assert (await http.post("/api/embed", json=body)).status_code == expected
    sim.engine.set_fault(Fault(kind="die_after", count=1))
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/api/embed", json=body)
    assert (await http.post("/api/embed", json=body)).status_code == 200


async def test_the_control_api_sets_lists_and_clears_faults(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """POST /_sim/faults arms a fault, GET lists what is left, DELETE clears; bad bodies 400."""
    armed = await http.post("/_sim/faults", json={"kind": "busy", "count": 2, "models": [GEN]})
    assert armed.json() == {"faults": [{"kind": "busy", "count": 2, "models": [GEN]}]}
    assert (await http.post("/api/generate", json=ASK)).status_code == 503
    assert (await http.get("/_sim/faults")).json()["faults"][0]["count"] == 1
    assert (await http.delete("/_sim/faults")).json() == {"faults": []}
    assert (await http.post("/api/generate", json=ASK)).status_code == 200
    bad_bodies = [{"kind": "meltdown"}, {"kind": "busy", "count": 0}, {"kind": "busy", "x": 1}, {}]
    for bad in bad_bodies:
        resp = await http.post("/_sim/faults", json=bad)
        assert resp.status_code == 400 and resp.json()["error"].startswith("invalid fault")
    assert sim.engine.faults == []


async def test_scripts_answer_a_matching_prompt_with_their_text(
    sim: SimulatorServer, http: httpx.AsyncClient
) -> None:
    """POST /_sim/scripts makes the host answer a prompt containing `match` with `text`,
    streamed token by token with the usual figures, `count` times; DELETE clears."""
    text = '{"steps": [{"id": 1, "text": "count the floors"}]}'
    added = await http.post("/_sim/scripts", json={"match": "Plan:", "text": text, "count": 1})
    assert added.json()["scripts"][0]["count"] == 1
    lines = [
        json.loads(line)
        async for line in _lines(http, {"model": GEN, "prompt": "Plan: how many windows?"})
    ]
    assert "".join(line["response"] for line in lines) == text
    assert lines[-1]["done"] and lines[-1]["eval_count"] == len(lines) - 1
    again = (
        await http.post("/api/generate", json={**ASK, "prompt": "Plan: again", "stream": False})
    ).json()
    assert again["response"] != text  # the script was used up
    chat = {**CHAT, "messages": [{"role": "user", "content": "Plan: chat"}]}
    await http.post("/_sim/scripts", json={"match": "Plan:", "text": "scripted"})
    assert (await http.post("/api/chat", json={**chat, "stream": False})).json()["message"][
        "content"
    ] == "scripted"
    assert (await http.delete("/_sim/scripts")).json() == {"scripts": []}
    for bad in [
        {"match": "", "text": "x"},
        {"match": "a"},
        {"match": "a", "text": "x", "count": 0},
    ]:
        resp = await http.post("/_sim/scripts", json=bad)
        assert resp.status_code == 400 and resp.json()["error"].startswith("invalid script")


async def _lines(http: httpx.AsyncClient, body: dict[str, object]) -> AsyncIterator[str]:
    async with http.stream("POST", "/api/generate", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.strip():
                yield line


async def test_stats_count_requests_and_generations(http: httpx.AsyncClient) -> None:
    """Requests per path; generations only for answers that reached a model; reset zeroes."""
    await http.post("/_sim/faults", json={"kind": "busy", "count": 1})
    await http.post("/api/generate", json=ASK)  # busy
    await http.post("/api/generate", json={"model": GEN})  # a load, not a generation
    await http.post("/api/chat", json=CHAT)
    await http.get("/api/tags")
    stats = (await http.get("/_sim/stats")).json()
    assert stats["requests"] == {"/api/generate": 2, "/api/chat": 1, "/api/tags": 1}
    assert (stats["generations"], stats["in_flight"], stats["queued"]) == (1, 0, 0)
    assert stats["faults"] == {"busy": 1}
    reset = (await http.post("/_sim/reset")).json()
    assert reset == {"requests": {}, "generations": 0, "in_flight": 0, "queued": 0, "faults": {}}


# -- pull, delete -----------------------------------------------------------------------------


async def test_pull_streams_progress_then_the_model_is_listed(http: httpx.AsyncClient) -> None:
    """pulling manifest, per-layer progress, verifying, writing manifest, success; then tags."""
    lines = await ndjson(http, "/api/pull", {"model": "tinyllama"})
    statuses = [x["status"] for x in lines]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    progress = [x for x in lines if x["status"].startswith("pulling ") and "digest" in x]
    assert len({x["digest"] for x in progress}) >= 2
    for x in progress:
        assert x["status"] == f"pulling {x['digest'][7:19]}" and x["digest"].startswith("sha256:")
        assert 0 <= x.get("completed", 0) <= x["total"]
    assert any(x.get("completed") == x["total"] for x in progress)
    names = [m["name"] for m in (await http.get("/api/tags")).json()["models"]]
    assert names[0] == "tinyllama:latest"  # the newest first
    assert (await whole(http, "/api/generate", {**ASK, "model": "tinyllama"}))["done"]


async def test_pull_of_a_missing_model_fails_like_ollama(http: httpx.AsyncClient) -> None:
    """An error line in a stream; 500 without streaming; success when not streaming."""
    lines = await ndjson(http, "/api/pull", {"model": "missing-model"})
    missing = "pull model manifest: file does not exist"
    assert lines == [{"status": "pulling manifest"}, {"error": missing}]
    failed = await http.post("/api/pull", json={"model": "missing-model", "stream": False})
    assert (failed.status_code, failed.json()) == (500, {"error": missing})
    quiet = await http.post("/api/pull", json={"model": "phi3:mini", "stream": False})
    assert quiet.json() == {"status": "success"}
    assert "phi3:mini" in {m["name"] for m in (await http.get("/api/tags")).json()["models"]}


async def test_delete_removes_a_model(http: httpx.AsyncClient) -> None:
    """DELETE /api/delete: 200, the model is gone; again: 404."""
    gone = await http.request("DELETE", "/api/delete", json={"model": "qwen2.5:7b"})
    assert (gone.status_code, gone.content) == (200, b"")
    again = await http.request("DELETE", "/api/delete", json={"model": "qwen2.5:7b"})
    assert (again.status_code, again.json()) == (404, {"error": "model 'qwen2.5:7b' not found"})
    assert (await http.post("/api/chat", json=CHAT)).status_code == 404


# -- life -----------------------------------------------------------------------------------


async def test_kill_drops_streams_and_start_comes_back_on_the_same_port(sim_factory) -> None:
    """A killed host cuts answers and refuses connections; restarted, it serves again."""
    sim = await sim_factory(models=[GEN], tokens_per_second=100)
    port = sim.port
    async with connect(sim) as http:
        await whole(http, "/api/generate", {**ASK, "options": {"num_predict": 1}})
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async with http.stream("POST", "/api/generate", json=LONG) as resp:
                async for _ in resp.aiter_lines():
                    if sim.state == "running":
                        await sim.kill()
        assert sim.engine.stats.in_flight == 0 and sim.state == "stopped"
        with pytest.raises(httpx.ConnectError):
            await http.get("/api/version")
        await sim.start()
        assert sim.port == port
        assert (await http.get("/api/ps")).json() == {"models": []}  # a restarted host is cold
        assert (await whole(http, "/api/generate", {**ASK, "options": {"num_predict": 1}}))["done"]


async def test_stop_lets_answers_finish(sim_factory) -> None:
    """A graceful stop refuses new connections but finishes the answer in flight."""
    sim = await sim_factory(models=[GEN], tokens_per_second=200)
    async with connect(sim) as http:
        async with http.stream("POST", "/api/generate", json=TWENTY) as resp:
            lines = resp.aiter_lines()
            await anext(lines)
            stopping = asyncio.create_task(sim.stop(grace=5))
            rest = [json.loads(line) async for line in lines]
        await stopping
    assert rest[-1]["done"] is True and rest[-1]["eval_count"] == 20


async def test_the_cli_serves_until_sigterm(unused_port: int) -> None:
    """`ollamesh sim` logs where it listens, serves, and exits 0 on SIGTERM."""
    script = (
        "import argparse, sys\n"
        "from actors.cli.sim import register\n"
        "parser = argparse.ArgumentParser(prog='ollamesh')\n"
        "register(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, "sim", "--port", str(unused_port), "--models", "a:1b,b",
        "--fault", "busy", "--fault-count", "1",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            line = await proc.stderr.readline()
        event = json.loads(line)
        assert event["event"] == "simulator listening" and event["faults"] == ["busy"]
        async with httpx.AsyncClient(base_url=event["url"]) as http:
            tags = (await http.get("/api/tags")).json()
            ask = {"model": "a:1b", "prompt": "x"}
            codes = [(await http.post("/api/generate", json=ask)).status_code for _ in range(2)]
        assert [m["name"] for m in tags["models"]] == ["a:1b", "b:latest"]
        assert codes == [503, 200]
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0


def test_a_fault_round_trips_as_json() -> None:
    """The control body and the in-process Fault are the same msgspec Struct."""
    fault = Fault(kind="stall", tokens=3, count=None, models=["x"])
    assert msgspec.json.decode(msgspec.json.encode(fault), type=Fault) == fault
    assert msgspec.to_builtins(fault) == {"kind": "stall", "tokens": 3, "models": ["x"]}


async def test_truncate_after_ends_the_body_cleanly_without_done(sim_factory) -> None:
    """`truncate_after` sends N tokens, then a complete HTTP body with no final line."""
    sim = await sim_factory(models=["llama3.2:3b"])
    sim.engine.set_fault(Fault(kind="truncate_after", tokens=3))
    async with httpx.AsyncClient(base_url=sim.url) as http:
        resp = await http.post("/api/generate", json={"model": "llama3.2:3b", "prompt": "hi"})
    lines = [json.loads(line) for line in resp.text.splitlines()]
    assert resp.status_code == 200 and len(lines) == 3
    assert not any(line["done"] for line in lines)
