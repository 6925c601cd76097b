"""The answer cache: key and policy, hits served as streams, tiers, restore, invalidation."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from actors.router.cache import cache_key
from actors.simulator import Fault
from bus.client import Client
from bus.errors import BadRequest, RateLimited, UpstreamError
from bus.subjects import Subjects
from schemas import ChatRequest, EmbedRequest, GenerateRequest, Kind, Message, Options
from tests.helpers import assert_well_formed, eventually, query, stored_stream

MODEL = "llama3.2:3b"
MODELS = [MODEL, "qwen2.5:7b"]
CACHED = ("router", "executor", "recorder", "cache")
DETERMINISTIC = {"temperature": 0, "num_predict": 6}


def gen(**fields: object) -> GenerateRequest:
    return GenerateRequest(model=MODEL, prompt="hi", **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("request_", "cached"),
    [
        (gen(), False),
        (gen(options=Options(temperature=0.7)), False),
        (gen(options=Options(temperature=0)), True),
        (gen(options=Options(seed=7, temperature=0.9)), True),
        (gen(cache="force"), True),
        (gen(options=Options(temperature=0), cache="off"), False),
        (EmbedRequest(model=MODEL, input="x"), True),
    ],
    ids=["default", "warm", "temperature-0", "seed", "force", "off", "embed"],
)
def test_only_deterministic_requests_are_cached_by_default(request_, cached: bool) -> None:
    kind = Kind(str(request_.__struct_config__.tag))
    assert (cache_key(kind, MODEL, request_) is not None) is cached


def test_the_key_follows_what_shapes_the_answer() -> None:
    """Routing fields and speed-only options leave the key alone; content changes it."""
    base = gen(options=Options(temperature=0, num_predict=5))
    key = cache_key(Kind.GENERATE, MODEL, base)
    same = [
        gen(options=Options(temperature=0, num_predict=5, num_thread=8), request_id="r1"),
        gen(options=Options(temperature=0, num_predict=5), stream=False, priority="batch"),
        gen(options=Options(temperature=0, num_predict=5), keep_alive="1h", deadline_ms=5),
    ]
    for other in same:
        assert cache_key(Kind.GENERATE, MODEL, other) == key
    different = [
        gen(options=Options(temperature=0, num_predict=6)),
        gen(options=Options(temperature=0, num_predict=5), system="be brief"),
        gen(options=Options(temperature=0, num_predict=5), format="json"),
    ]
    keys = {cache_key(Kind.GENERATE, MODEL, other) for other in different}
    assert key not in keys and len(keys) == len(different)
    assert cache_key(Kind.GENERATE, "qwen2.5:7b", base) != key
    chat = ChatRequest(model=MODEL, messages=[Message(role="user", content="hi")])
    assert cache_key(Kind.CHAT, MODEL, chat) is None


async def test_a_repeated_request_is_served_from_the_cache(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """The second identical request never reaches the host and arrives as chunks then
    `done` with `cached: true`; non-streamed too; stats count the hits."""
    sim = await sim_factory(models=MODELS)
    stack = await stack_factory(
        [sim.url], actors=CACHED, database={"url": database_url}, recorder={"flush_s": 0.2}
    )
    first = await client.generate(MODEL, "tell me", stream=True, options=DETERMINISTIC)
    text = await first.text()
    assert first.done is not None and not first.done.cached

    async def stored() -> bool:
        return stack.cache is not None and stack.cache.sink.written == 1

    await eventually(stored)
    again = await client.generate(MODEL, "tell me", stream=True, options=DETERMINISTIC)
    assert await again.text() == text
    assert again.done is not None and again.done.cached
    assert again.done.eval_count == first.done.eval_count and again.done.host == sim.url
    whole = await client.generate(MODEL, "tell me", options=DETERMINISTIC)
    assert whole.cached and whole.response == text
    assert sim.engine.stats.requests["/api/generate"] == 1

    async def counted() -> bool:
        rows = (await client.stats()).windows["1m"]
        row = next((r for r in rows if r.model == MODEL), None)
        return row is not None and row.requests == 3 and row.cache_hit_rate == pytest.approx(2 / 3)

    await eventually(counted)


async def test_the_cache_survives_a_restart_of_everything(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """With the shared tier emptied and every actor restarted, Postgres brings the answer
    back: the host is not asked again."""
    sim = await sim_factory(models=MODELS)
    sections = {"actors": CACHED, "database": {"url": database_url}}
    stack = await stack_factory([sim.url], **sections)
    await client.generate(MODEL, "remember me", options=DETERMINISTIC)
    await eventually(lambda: _rows(database_url, 1))
    assert stack.cache is not None
    for key in await stack.cache.kv.keys():
        await stack.cache.kv.purge(key)  # as if the bus had lost its data
    await stack.stop(grace=1.0)
    await stack_factory([sim.url], **sections)
    result = await client.generate(MODEL, "remember me", options=DETERMINISTIC)
    assert result.cached
    assert sim.engine.stats.requests["/api/generate"] == 1


async def test_invalidating_a_model_drops_its_answers_everywhere(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """After invalidation the same request goes to the host again; other models keep theirs."""
    sim = await sim_factory(models=MODELS)
    stack = await stack_factory([sim.url], actors=CACHED, database={"url": database_url})
    for model in MODELS:
        await client.generate(model, "x", options=DETERMINISTIC)
    await eventually(lambda: _rows(database_url, 2))
    assert (await client.generate(MODEL, "x", options=DETERMINISTIC)).cached  # in memory now
    assert await client.invalidate_cache(MODEL) == 1
    assert stack.router is not None
    memory = stack.router.cache

    async def forgotten() -> bool:  # routers hear of it by broadcast, a moment later
        return not memory.held(MODEL)

    await eventually(forgotten)
    assert not (await client.generate(MODEL, "x", options=DETERMINISTIC)).cached
    assert (await client.generate("qwen2.5:7b", "x", options=DETERMINISTIC)).cached
    assert sim.engine.stats.requests["/api/generate"] == 3
    # A misspelt field is refused, not read as "no model: everything".
    reply = await client.nc.request(client.subjects.cache_invalidate, b'{"modle": "x"}', timeout=5)
    assert b'"bad_request"' in reply.data
    assert (await client.generate("qwen2.5:7b", "x", options=DETERMINISTIC)).cached


async def test_purge_drops_expired_answers_and_keeps_the_size_bound(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """Expired rows go; beyond `max_bytes` the oldest go first."""
    sim = await sim_factory(models=MODELS)
    stack = await stack_factory([sim.url], actors=CACHED, database={"url": database_url})
    for i in range(3):
        await client.generate(MODEL, f"q{i}", options=DETERMINISTIC)
    await eventually(lambda: _rows(database_url, 3))
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE ollama_cache SET expires_at = now() - interval '1 s',"
            " created_at = now() - interval '1 h' WHERE key = ("
            " SELECT key FROM ollama_cache ORDER BY created_at LIMIT 1)"
        )
        sizes = [r["size"] for r in await conn.fetch("SELECT size FROM ollama_cache")]
        assert stack.cache is not None
        stack.cache.cfg.max_bytes = max(sizes)  # room for the newest answer only
        assert await stack.cache.purge() == 2
        left = await conn.fetchval("SELECT count(*) FROM ollama_cache")
    finally:
        await conn.close()
    assert left == 1


async def _rows(url: str, n: int) -> bool:
    [row] = await query(url, "SELECT count(*) FROM ollama_cache")
    return bool(row[0] == n)


async def test_identical_requests_in_flight_reach_the_host_once(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """Twenty identical deterministic requests at once, streamed and not, across two
    routers: one generation upstream, and every requester gets the whole answer."""
    sim = await sim_factory(models=MODELS, tokens_per_second=100)
    await stack_factory([sim.url], actors=CACHED, database={"url": database_url})
    await stack_factory([sim.url], actors=("router",))
    options = {"temperature": 0, "num_predict": 20}

    async def streamed() -> str:
        async with await client.generate(MODEL, "same", stream=True, options=options) as s:
            return await s.text()

    async def whole() -> str:
        return (await client.generate(MODEL, "same", options=options)).response

    texts = await asyncio.gather(*(streamed() if i % 2 else whole() for i in range(20)))
    assert len(set(texts)) == 1 and texts[0]
    assert sim.engine.stats.requests["/api/generate"] == 1


async def test_identical_embeds_each_get_their_vectors(sim_factory, stack_factory, client) -> None:
    """An embed's vectors are not in its stream, so an identical embed under way is not
    followed: each generates (or, once the cache keeper stored one, reads it whole).
    Without the cache keeper the first one's mark stays, and every later one generates."""
    sim = await sim_factory(models=["nomic-embed-text"])
    await stack_factory([sim.url])
    first = await client.embed("nomic-embed-text", "same")
    together = await asyncio.gather(*(client.embed("nomic-embed-text", "same") for _ in range(4)))
    assert first.embeddings and all(r.embeddings == first.embeddings for r in together)
    assert sim.engine.stats.requests["/api/embed"] == 5


async def test_followers_of_a_failed_generation_get_its_error_then_retry_afresh(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """When the one generation fails (mid-stream, and it may not move to go on), those
    sharing it get the error; the next identical request generates anew instead of
    following the failed one."""
    sim = await sim_factory(models=MODELS, tokens_per_second=100)
    sim.engine.set_fault(Fault(kind="error_after", tokens=5, count=1))
    await stack_factory([sim.url], actors=CACHED, database={"url": database_url})
    options = {"temperature": 0, "num_predict": 20}
    outcomes = await asyncio.gather(
        *(client.generate(MODEL, "fragile", options=options, migrate=False) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(o, UpstreamError) for o in outcomes), outcomes
    result = await client.generate(MODEL, "fragile", options=options)
    assert result.response and not result.cached
    assert sim.engine.stats.requests["/api/generate"] == 2


async def test_followers_end_when_their_leader_is_refused(
    database_url: str, sim_factory, stack_factory, client: Client
) -> None:
    """The request leading identical ones is refused before any host (here: its rate
    limit); those following it get the refusal too, at once, instead of waiting."""
    sim = await sim_factory(models=MODELS)
    await stack_factory(
        [sim.url], actors=CACHED, database={"url": database_url},
        routing={"limits": {MODEL: {"rpm": 1}}},
    )  # fmt: skip
    await client.generate(MODEL, "first", options=DETERMINISTIC)  # the minute's one request
    outcomes = await asyncio.gather(
        *(client.generate(MODEL, "same again", options=DETERMINISTIC) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(o, RateLimited) for o in outcomes), outcomes
    assert sim.engine.stats.requests["/api/generate"] == 1


async def test_a_cacheable_request_sent_again_does_not_follow_itself(
    database_url: str, sim_factory, stack_factory, client: Client, prefix: str
) -> None:
    """The same cacheable request (same `request_id`) sent again while it generates is the
    same request: its stream gets each chunk once and one `done`, and a non-streamed copy
    is refused as a reused id."""
    sim = await sim_factory(models=MODELS, tokens_per_second=50)
    await stack_factory([sim.url], actors=CACHED, database={"url": database_url})
    options = {"temperature": 0, "num_predict": 20}
    first = await client.generate(MODEL, "same", stream=True, options=options, request_id="sf-1")
    again = await client.generate(MODEL, "same", stream=True, options=options, request_id="sf-1")
    with pytest.raises(BadRequest, match="already in use"):
        await client.generate(MODEL, "same", options=options, request_id="sf-1")
    assert await first.text()
    await again.aclose()
    assert_well_formed(await stored_stream(client.nc, Subjects(prefix), "sf-1"))
    assert sim.engine.stats.requests["/api/generate"] == 1
