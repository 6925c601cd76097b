"""One request, end to end: real nats-server, router, executor, simulated Ollama hosts."""

from __future__ import annotations

import asyncio
import uuid

import msgspec

from bus.client import Client
from bus.subjects import Subjects
from schemas import Accepted, ChatResult, Chunk, Done, GenerateResult, decode_reply, decode_stream
from tests.helpers import assert_well_formed, stored_stream

MODELS = ["llama3.2:3b", "qwen2.5:7b", "nomic-embed-text"]
CHAT = [{"role": "user", "content": "Name a load-bearing wall material."}]


async def test_streamed_chat_arrives_in_order_and_matches_the_whole_answer(
    sim_factory, stack_factory, client: Client
) -> None:
    """Chunks come numbered from 1, end with one `done`, and spell the non-streamed answer."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    stream = await client.chat("qwen2.5:7b", CHAT, stream=True, options={"seed": 3})
    chunks = [c async for c in stream]
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
    done = stream.done
    assert done is not None and done.done_reason == "stop"
    assert done.model == "qwen2.5:7b" and done.host == sim.url
    assert done.eval_count > 0 and done.total_duration > 0 and done.seq == len(chunks) + 1
    whole = await client.chat("qwen2.5:7b", CHAT, options={"seed": 3})
    assert isinstance(whole, ChatResult)
    assert whole.message.role == "assistant"
    assert "".join(c.text for c in chunks) == whole.message.content != ""


async def test_generate_and_embed_results_look_like_ollamas(
    sim_factory, stack_factory, client: Client
) -> None:
    """Non-streamed generate has `response` and stats; embed has `embeddings`."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    result = await client.generate(
        "llama3.2:3b", "hi", options={"temperature": 0, "num_predict": 7}
    )
    assert isinstance(result, GenerateResult)
    assert result.response and result.eval_count == 7 and result.done_reason == "length"
    embedded = await client.embed("nomic-embed-text", ["a", "b"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) > 1
    assert (
        embedded.model == "nomic-embed-text:latest" and embedded.host == sim.url
    )  # as Ollama names it


async def test_roles_resolve_to_models(sim_factory, stack_factory, client: Client) -> None:
    """`primary` as the model, or `role: fast`, run the models the config names."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    primary = await client.generate("primary", "hi", options={"num_predict": 3})
    assert primary.model == "qwen2.5:7b"
    fast = await client.generate(None, "hi", role="fast", options={"num_predict": 3})
    assert fast.model == "llama3.2:3b"


async def test_a_plain_nats_client_gets_a_non_streamed_answer(
    sim_factory, stack_factory, nc, prefix: str
) -> None:
    """`nats req llm.v1.generate '{"model":..,"prompt":..,"stream":false}'` works."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    body = b'{"model":"llama3.2:3b","prompt":"hi","stream":false}'
    reply = await nc.request(f"{prefix}.v1.generate", body, timeout=10)
    decoded = msgspec.json.decode(reply.data)
    assert decoded["type"] == "generate_result" and decoded["done"] is True
    assert decoded["response"] and decoded["model"] == "llama3.2:3b"


async def test_a_plain_nats_client_streams_with_one_subscription_and_one_request(
    sim_factory, stack_factory, nc, prefix: str
) -> None:
    """No JetStream rights needed: subscribe to the stream subject, then send the request."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    rid = uuid.uuid4().hex
    sub = await nc.subscribe(f"{prefix}.v1.stream.{rid}")
    body = msgspec.json.encode({"model": "llama3.2:3b", "prompt": "hi", "request_id": rid})
    reply = decode_reply((await nc.request(f"{prefix}.v1.generate", body, timeout=10)).data)
    assert isinstance(reply, Accepted) and reply.stream == f"{prefix}.v1.stream.{rid}"
    got = []
    while not got or isinstance(got[-1], Chunk):
        got.append(decode_stream((await sub.next_msg(timeout=10)).data))
    assert_well_formed(got)
    assert isinstance(got[-1], Done)


async def test_resume_replays_from_any_seq(
    sim_factory, stack_factory, client: Client, prefix: str
) -> None:
    """After the answer ended, `resume` replays it from the asked seq, done included."""
    # Paced, so the tokens arrive in several reads and make several chunks.
    sim = await sim_factory(models=MODELS, tokens_per_second=500)
    await stack_factory([sim.url], executor={"coalesce_ms": 0})
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 20})
    chunks = [c async for c in stream]
    assert len(chunks) >= 3
    replay = await client.resume(stream.request_id, from_seq=3)
    again = [c async for c in replay]
    assert [c.seq for c in again] == [c.seq for c in chunks[2:]]
    assert "".join(c.text for c in again) == "".join(c.text for c in chunks[2:])
    assert replay.done is not None and replay.done.seq == stream.done.seq


async def test_resume_follows_a_live_stream(sim_factory, stack_factory, client: Client) -> None:
    """A client that attaches mid-answer gets the stored part, then the live rest."""
    sim = await sim_factory(models=MODELS, tokens_per_second=200)
    await stack_factory([sim.url])
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 30})
    first = await stream.__anext__()
    replay = await client.resume(stream.request_id)
    rest = [c async for c in stream]
    replayed = [c async for c in replay]
    assert [first, *rest] == replayed
    assert replay.done == stream.done


async def test_every_stream_is_stored_with_one_ending(
    sim_factory, stack_factory, client: Client, nc, prefix: str
) -> None:
    """The chunk stream holds chunks 1..n and exactly one terminal message."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    streams = await asyncio.gather(
        *(
            client.generate("llama3.2:3b", f"q{i}", stream=True, options={"num_predict": 12})
            for i in range(8)
        )
    )
    for s in streams:
        await s.text()
    for s in streams:
        assert_well_formed(await stored_stream(nc, Subjects(prefix), s.request_id))


async def test_tokens_are_coalesced_but_the_first_is_never_held(
    sim_factory, stack_factory, client: Client
) -> None:
    """With a 40 ms window at 250 tokens/s, chunks carry several tokens; the first carries one."""
    sim = await sim_factory(models=MODELS, tokens_per_second=250)
    await stack_factory([sim.url], executor={"coalesce_ms": 40})
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 60})
    chunks = [c async for c in stream]
    assert stream.done is not None and stream.done.eval_count == 60
    assert len(chunks[0].text.split()) == 1
    assert len(chunks) < 30, f"{len(chunks)} chunks for 60 tokens"


async def test_in_flight_requests_per_model_are_capped(
    sim_factory, stack_factory, client: Client
) -> None:
    """With a cap of 2, no more than 2 requests of one model run on a host at once."""
    sim = await sim_factory(models=MODELS, tokens_per_second=400)
    await stack_factory([sim.url], executor={"max_inflight_per_model": 2})
    running = peak = 0

    async def one(i: int) -> None:
        nonlocal running, peak
        stream = await client.generate(
            "llama3.2:3b", f"q{i}", stream=True, options={"num_predict": 20}
        )
        started = False
        async for _ in stream:
            if not started:
                started = True
                running += 1
                peak = max(peak, running)
        running -= 1

    await asyncio.gather(*(one(i) for i in range(6)))
    assert peak == 2


async def test_resume_past_the_end_returns_just_the_ending(
    sim_factory, stack_factory, client: Client
) -> None:
    """Resuming after the last chunk yields no chunk and still ends with `done`."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 4})
    await stream.text()
    replay = await client.resume(stream.request_id, from_seq=100)
    assert [c async for c in replay] == []
    assert replay.done == stream.done


async def test_closing_the_client_with_an_unread_stream_is_prompt(
    sim_factory, stack_factory, nats_server, prefix: str
) -> None:
    """A stream nobody reads to the end does not hold up the client's drain."""
    sim = await sim_factory(models=MODELS, tokens_per_second=50)
    await stack_factory([sim.url])
    client = await Client(nats_server.url, prefix=prefix).connect()
    stream = await client.generate("llama3.2:3b", "hi", stream=True, options={"num_predict": 500})
    await stream.__anext__()
    async with asyncio.timeout(5):
        await client.close()


async def test_a_request_naming_no_model_is_routed_by_task_and_strategy(
    sim_factory, stack_factory, client: Client
) -> None:
    """Short answers go to `fast`; otherwise round-robin over primary, fast and backup."""
    sim = await sim_factory(models=MODELS)
    await stack_factory(
        [sim.url],
        roles={"primary": "qwen2.5:7b", "fast": "llama3.2:3b", "backup": "qwen2.5:7b"},
        routing={"strategy": "round-robin"},
    )
    short = await client.generate(None, "hi", options={"num_predict": 5})
    assert short.model == "llama3.2:3b"
    chosen = [
        (await client.generate(None, f"q{i}", options={"num_predict": 600})).model for i in range(3)
    ]
    assert chosen == ["qwen2.5:7b", "llama3.2:3b", "qwen2.5:7b"]
