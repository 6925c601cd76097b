"""Model choice without a network: task rules and the four balancing strategies."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from actors.router.queues import retry_after_ms
from actors.router.selection import ModelStats, Selector, task_role
from bus.config import RoutingConfig
from schemas import ChatRequest, GenerateRequest, Message, Options

RULES = RoutingConfig()
MODELS = ["big", "small", "spare"]


@pytest.mark.parametrize(
    ("request_", "role"),
    [
        pytest.param(GenerateRequest(prompt="x", images=["aGk="]), "vision", id="images"),
        pytest.param(
            ChatRequest(messages=[Message(role="user", content="x", images=["aGk="])]),
            "vision",
            id="chat-images",
        ),
        pytest.param(
            GenerateRequest(prompt="x", task="mathematical"), "mathematical", id="math-hint"
        ),
        pytest.param(
            GenerateRequest(prompt="x", options=Options(num_predict=100)), "fast", id="short"
        ),
        pytest.param(
            GenerateRequest(prompt="x", options=Options(num_predict=500)), None, id="at-threshold"
        ),
        pytest.param(
            GenerateRequest(prompt="x", options=Options(num_predict=-1)), None, id="unbounded"
        ),
        pytest.param(GenerateRequest(prompt="x"), None, id="nothing-special"),
    ],
)
def test_task_rules(request_, role) -> None:
    """Images -> vision, a mathematical hint -> mathematical, few tokens -> fast."""
    assert task_role(request_, RULES) == role


def test_round_robin_cycles() -> None:
    """Round-robin takes each candidate in turn."""
    s = Selector("round-robin", {})
    assert [s.choose(MODELS, {}) for _ in range(6)] == MODELS * 2


def test_least_loaded_takes_the_emptiest_and_spreads_ties() -> None:
    """The model with fewest requests in flight wins; equal loads go round-robin."""
    s = Selector("least-loaded", {})
    stats = {
        "big": ModelStats(in_flight=3),
        "small": ModelStats(in_flight=1),
        "spare": ModelStats(in_flight=2),
    }
    assert s.choose(MODELS, stats) == "small"
    assert {s.choose(MODELS, {}) for _ in range(3)} == set(MODELS)


def test_weighted_follows_the_weights() -> None:
    """Traffic splits in proportion to the weights."""
    s = Selector("weighted", {"big": 3.0, "small": 1.0, "spare": 0.0}, random.Random(1))
    counts = Counter(s.choose(MODELS, {}) for _ in range(4000))
    assert counts["spare"] == 0 and 2.6 < counts["big"] / counts["small"] < 3.4


def test_adaptive_prefers_fast_reliable_models_but_starves_none() -> None:
    """A slow, failing model gets less; a model with no history gets a fair share."""
    s = Selector("adaptive", {}, random.Random(2))
    good, bad = ModelStats(), ModelStats()
    for _ in range(20):
        good.finished(True, 100.0)
        bad.finished(False, 0.0)
    bad.finished(True, 400.0)
    counts = Counter(s.choose(MODELS, {"big": good, "small": bad}) for _ in range(4000))
    assert counts["big"] > 5 * counts["small"] > 0
    assert counts["spare"] > counts["small"] and counts["spare"] > 0.2 * counts["big"]


def test_model_stats_track_load_and_latency() -> None:
    """In-flight falls as requests finish; latency is a moving average of successes."""
    s = ModelStats(in_flight=2)
    s.finished(True, 100.0)
    s.finished(True, 200.0)
    assert s.in_flight == 0 and s.latency_ms == pytest.approx(120.0)
    assert s.success_rate == pytest.approx(3 / 4)


@pytest.mark.parametrize(
    ("queue_max", "drain", "expected"),
    [(1000, 50.0, 2000), (1000, 0.0, 1000), (1000, 10_000.0, 100), (1000, 0.5, 60_000)],
    ids=["a-tenth-of-the-queue", "nothing-drained-yet", "at-least-0.1s", "at-most-60s"],
)
def test_overloaded_retry_after_follows_the_drain_rate(
    queue_max: int, drain: float, expected: int
) -> None:
    """A full queue's hint is the time to drain a tenth of it, within 0.1 s and 60 s."""
    assert retry_after_ms(queue_max, drain) == expected
