"""Rate limits: the GCRA arithmetic alone, then shared limits on a real JetStream bucket."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from bus.client import Client
from bus.config import ModelLimits
from bus.connection import connect
from bus.errors import BadRequest, Overloaded, RateLimited
from bus.limits import Limit, RateLimiter, SharedLimits, Step, gcra
from bus.server import EmbeddedNats
from bus.subjects import model_token

MODEL = "qwen2.5:7b"
T0 = 1000.0


class FakeClock:
    """A wall clock that moves only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def stored(kv: KeyValue, unit: str, model: str = MODEL) -> float:
    """The TAT a limit holds in the bucket."""
    entry = await kv.get(f"{model_token(model)}.{unit}")
    assert entry.value is not None
    return float(entry.value.decode())


# The arithmetic, without a network.


@pytest.mark.parametrize("per_minute", [1, 3, 7, 10, 60, 1000], ids=lambda n: f"L={n}")
def test_gcra_admits_a_burst_of_the_limit_then_spaces_by_the_interval(per_minute: int) -> None:
    """L units pass at once from an empty state; the next one waits one interval, 60/L."""
    tat = 0.0
    for _ in range(per_minute):
        step = gcra(tat, T0, 1, per_minute, max_wait=0.0)
        assert step == Step(step.tat, 0.0, admitted=True)
        tat = step.tat
    assert tat == pytest.approx(T0 + 60.0)
    step = gcra(tat, T0, 1, per_minute, max_wait=60.0)
    assert step.admitted
    assert step.wait == pytest.approx(60.0 / per_minute)


def test_gcra_next_wait_is_exact_with_round_numbers() -> None:
    """With L=3 the fourth request waits exactly T = 20 s, and the fifth 40 s."""
    tat = 0.0
    for _ in range(3):
        tat = gcra(tat, T0, 1, 3, max_wait=0.0).tat
    assert gcra(tat, T0, 1, 3, max_wait=20.0) == Step(T0 + 80.0, 20.0, admitted=True)
    assert gcra(T0 + 80.0, T0, 1, 3, max_wait=60.0) == Step(T0 + 100.0, 40.0, admitted=True)


def test_gcra_refusal_leaves_the_state_unchanged() -> None:
    """Over `max_wait` the step is refused, keeps the TAT, and says how long to wait."""
    full = T0 + 60.0
    step = gcra(full, T0, 1, 3, max_wait=19.9)
    assert step == Step(full, 20.0, admitted=False)
    assert gcra(step.tat, T0, 1, 3, max_wait=19.9) == step


def test_gcra_capacity_returns_as_time_passes() -> None:
    """One interval after a full burst one more unit passes at once; an idle past banks nothing."""
    full = T0 + 60.0
    assert gcra(full, T0 + 20.0, 1, 3, max_wait=0.0) == Step(T0 + 80.0, 0.0, admitted=True)
    assert gcra(T0 - 500.0, T0, 1, 3, max_wait=0.0) == Step(T0 + 20.0, 0.0, admitted=True)


@pytest.mark.parametrize(
    ("cost", "per_minute", "fits"),
    [
        pytest.param(1000, 1000, True, id="exactly-a-minute"),
        pytest.param(1001, 1000, False, id="above-a-minute"),
        pytest.param(2, 1, False, id="two-requests-at-rpm-1"),
    ],
)
def test_gcra_cost_above_a_minute_can_never_pass(cost: int, per_minute: int, fits: bool) -> None:
    """A cost that a whole minute's allowance cannot cover is a bad request, whatever the wait."""
    if fits:
        assert gcra(0.0, T0, cost, per_minute, max_wait=0.0) == Step(T0 + 60.0, 0.0, True)
    else:
        with pytest.raises(BadRequest, match=f"{cost}.*{per_minute} per minute"):
            gcra(0.0, T0, cost, per_minute, max_wait=1e9)


def test_gcra_charges_and_refunds_without_max_wait() -> None:
    """A charge always applies, even beyond a minute; a refund never moves the TAT below now."""
    assert gcra(T0 + 10.0, T0, 2000, 1000) == Step(T0 + 130.0, 70.0, admitted=True)
    assert gcra(T0 - 50.0, T0, 500, 1000) == Step(T0 + 30.0, 0.0, admitted=True)
    assert gcra(T0 + 60.0, T0, -500, 1000) == Step(T0 + 30.0, 0.0, admitted=True)
    assert gcra(T0 + 10.0, T0, -500, 1000) == Step(T0, 0.0, admitted=True)


# Against a real nats-server.


async def test_rpm_admits_the_limit_then_refuses_or_queues(kv: KeyValue) -> None:
    """rpm=3: three pass at once; a fourth is refused at max_wait 0 and queued 20 s at 30."""
    limiter = RateLimiter(kv, {MODEL: ModelLimits(rpm=3)}, clock=FakeClock())
    assert limiter.limited(MODEL)
    for _ in range(3):
        assert await limiter.reserve(MODEL, 50, max_wait_s=0.0) == 0.0
    with pytest.raises(RateLimited) as refused:
        await limiter.reserve(MODEL, 50, max_wait_s=0.0)
    assert refused.value.retry_after_ms == 20000
    assert refused.value.retryable
    assert await stored(kv, "rpm") == T0 + 60.0  # The refusal reserved nothing.
    assert await limiter.reserve(MODEL, 50, max_wait_s=30.0) == 20.0
    with pytest.raises(RateLimited) as refused:
        await limiter.reserve(MODEL, 50, max_wait_s=30.0)
    assert refused.value.retry_after_ms == 40000
    assert set(await kv.keys()) == {f"{model_token(MODEL)}.rpm"}


async def test_tpm_counts_tokens_and_settle_moves_the_next_wait(kv: KeyValue) -> None:
    """tpm=1000 (T=60 ms per token): reservations add up; refunds and charges shift the next wait."""
    clock = FakeClock()
    limiter = RateLimiter(kv, {MODEL: ModelLimits(tpm=1000)}, clock=clock)
    assert await limiter.reserve(MODEL, 600, max_wait_s=0.0) == 0.0
    assert await limiter.reserve(MODEL, 400, max_wait_s=0.0) == 0.0
    with pytest.raises(RateLimited) as refused:
        await limiter.reserve(MODEL, 100, max_wait_s=0.0)
    assert refused.value.retry_after_ms == 6000

    await limiter.settle(MODEL, -300)  # The first request used 300 tokens, not 600.
    assert await stored(kv, "tpm") == pytest.approx(T0 + 42.0)
    assert await limiter.reserve(MODEL, 100, max_wait_s=0.0) == 0.0

    await limiter.settle(MODEL, 500)  # The second used 900, not 400.
    assert await stored(kv, "tpm") == pytest.approx(T0 + 78.0)
    assert await limiter.reserve(MODEL, 100, max_wait_s=30.0) == pytest.approx(24.0)

    clock.now += 3600.0
    await limiter.settle(MODEL, -1000)  # A refund long after never banks capacity.
    assert await stored(kv, "tpm") == clock.now
    await limiter.settle(MODEL, 0)
    assert set(await kv.keys()) == {f"{model_token(MODEL)}.tpm"}


async def test_tokens_above_the_tpm_are_a_bad_request(kv: KeyValue) -> None:
    """A request estimated above a whole minute of tokens can never pass, and touches nothing."""
    limiter = RateLimiter(kv, {MODEL: ModelLimits(rpm=10, tpm=1000)}, clock=FakeClock())
    with pytest.raises(BadRequest, match="1001 tokens"):
        await limiter.reserve(MODEL, 1001, max_wait_s=3600.0)
    with pytest.raises(NoKeysError):
        await kv.keys()


async def test_a_refusal_by_one_limit_reserves_nothing_in_the_other(kv: KeyValue) -> None:
    """With rpm and tpm, a request the tpm refuses leaves its request slot to the next one."""
    limiter = RateLimiter(kv, {MODEL: ModelLimits(rpm=2, tpm=1000)}, clock=FakeClock())
    assert await limiter.reserve(MODEL, 900, max_wait_s=0.0) == 0.0
    with pytest.raises(RateLimited, match="1000 tokens/min") as refused:
        await limiter.reserve(MODEL, 200, max_wait_s=0.0)
    assert refused.value.retry_after_ms == 6000
    assert await stored(kv, "rpm") == T0 + 30.0
    assert await limiter.reserve(MODEL, 100, max_wait_s=0.0) == 0.0
    with pytest.raises(RateLimited, match="2 requests/min") as refused:
        await limiter.reserve(MODEL, 0, max_wait_s=0.0)
    assert refused.value.retry_after_ms == 30000


async def test_limits_given_per_call_share_the_bucket_under_their_own_stems(kv: KeyValue) -> None:
    """Per-call limits (API keys, a set that changes at run time): each stem is its own
    budget beside a model's in the same bucket, and a limit changed between calls applies
    to the next call (the state is time, so rpm 2 needs half of rpm 1's wait)."""
    clock = FakeClock()
    shared = SharedLimits(kv, clock=clock)
    models = RateLimiter(kv, {MODEL: ModelLimits(rpm=1)}, clock=clock)
    alice, bob = Limit("apikey.a1.x", "API key 'alice'", rpm=1), Limit("apikey.b2", "bob", rpm=1)
    assert await models.reserve(MODEL, 0, max_wait_s=0.0) == 0.0
    assert await shared.reserve(alice, 0, max_wait_s=0.0) == 0.0
    assert await shared.reserve(bob, 0, max_wait_s=0.0) == 0.0
    with pytest.raises(RateLimited, match=r"API key 'alice' is over its rate limit") as refused:
        await shared.reserve(alice, 0, max_wait_s=0.0)
    assert refused.value.retry_after_ms == 60000
    with pytest.raises(RateLimited) as refused:
        await shared.reserve(alice._replace(rpm=2), 0, max_wait_s=0.0)
    assert refused.value.retry_after_ms == 30000
    for key in (f"{model_token(MODEL)}.rpm", "apikey.a1.x.rpm", "apikey.b2.rpm"):
        assert (await kv.get(key)).value  # each under its own key (a read, not a watch)
    assert not Limit("apikey.c3", "unlimited").limited
    assert await shared.reserve(Limit("apikey.c3", "unlimited"), 10**9, max_wait_s=0.0) == 0.0
    with pytest.raises(KeyNotFoundError):
        await kv.get("apikey.c3.rpm")


async def test_unlimited_models_never_touch_the_bucket(kv: KeyValue) -> None:
    """A model without limits (unlisted, or listed with none) is admitted without NATS."""
    limiter = RateLimiter(kv, {"empty:1b": ModelLimits()}, clock=FakeClock())
    for model in (MODEL, "empty:1b"):
        assert not limiter.limited(model)
        assert await limiter.reserve(model, 10**9, max_wait_s=0.0) == 0.0
        await limiter.settle(model, 500)
    with pytest.raises(NoKeysError):
        await kv.keys()


@pytest.mark.parametrize(
    ("limits", "tokens", "tats"),
    [
        pytest.param(ModelLimits(rpm=10), 100, {"rpm": T0 + 60.0}, id="rpm"),
        pytest.param(ModelLimits(tpm=1000), 100, {"tpm": T0 + 60.0}, id="tpm"),
        # The tpm binds; requests the tpm refused after their rpm commit are refunded there.
        pytest.param(
            ModelLimits(rpm=15, tpm=1000), 100, {"rpm": T0 + 40.0, "tpm": T0 + 60.0}, id="both"
        ),
    ],
)
async def test_routers_sharing_a_bucket_never_admit_beyond_the_limit(
    nats_server: EmbeddedNats,
    kv: KeyValue,
    prefix: str,
    limits: ModelLimits,
    tokens: int,
    tats: dict[str, float],
) -> None:
    """Two routers, each on its own connection, racing 20 requests admit exactly 10 (CAS)."""
    other = await connect(nats_server.url, name="router-2")
    try:
        kv2 = await other.jetstream().key_value(f"{prefix}_limits")
        routers = [RateLimiter(bucket, {MODEL: limits}, clock=FakeClock()) for bucket in (kv, kv2)]
        results = await asyncio.gather(
            *(routers[i % 2].reserve(MODEL, tokens, max_wait_s=0.0) for i in range(20)),
            return_exceptions=True,
        )
    finally:
        await other.drain()
    assert results.count(0.0) == 10
    assert sum(isinstance(r, RateLimited) for r in results) == 10
    for unit, tat in tats.items():
        assert await stored(kv, unit) == tat


# Through the router: a reservation whose request never runs is given back.


@pytest.fixture
async def limited(sim_factory, stack_factory):
    """A router and an executor in front of one slow host with one slot; the model is
    limited to two requests a minute, and its queue holds one request."""
    sim = await sim_factory(models=["llama3.2:3b"], tokens_per_second=20.0, num_parallel=1)
    await stack_factory(
        [sim.url],
        executor={"max_inflight_per_model": 1},
        routing={"limits": {"llama3.2:3b": {"rpm": 2}}, "queue_max": 1},
    )
    return sim


async def test_a_duplicate_request_id_reserves_nothing(limited, client: Client) -> None:
    """The same request sent twice (a client retrying) is one request: the limit of two
    still admits another."""
    first = await client.generate("llama3.2:3b", "a", stream=True, request_id="dup-1")
    again = await client.generate("llama3.2:3b", "a", stream=True, request_id="dup-1")
    assert again.request_id == first.request_id
    await first.text()
    await again.aclose()
    assert (await client.generate("llama3.2:3b", "b", options={"num_predict": 2})).done


async def test_a_request_refused_by_a_full_queue_reserves_nothing(limited, client: Client) -> None:
    """A request turned away with `overloaded` did not run: the limit still admits one."""
    running = await client.generate("llama3.2:3b", "a", stream=True, options={"num_predict": 40})
    await limited.engine.wait_for(lambda s: s.in_flight == 1, timeout=10)
    with pytest.raises(Overloaded):
        await client.generate("llama3.2:3b", "b", options={"num_predict": 2})
    await running.text()
    assert (await client.generate("llama3.2:3b", "c", options={"num_predict": 2})).done
