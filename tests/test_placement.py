"""Host choice rules: which host takes the next request, from the load board alone."""

from __future__ import annotations

import pytest

from actors.executor.placement import HOST_STRATEGIES, should_take
from schemas.internal import ModelLoad


def takers(strategy: str, loads: dict[str, ModelLoad]) -> set[str]:
    """The hosts with a free slot that would pull the next request."""
    return {
        h for h, v in loads.items() if v.in_flight < v.slots and should_take(strategy, h, loads)
    }


@pytest.mark.parametrize("strategy", HOST_STRATEGIES)
def test_warm_hosts_go_before_cold_ones(strategy: str) -> None:
    """A cold host waits while a warm one has a free slot, and steps in once none has."""
    loads = {
        "warm": ModelLoad(slots=2, in_flight=1, warm=True, taken=5, service_ms=100.0),
        "cold": ModelLoad(slots=4, in_flight=0, warm=False, taken=0),
    }
    assert takers(strategy, loads) == {"warm"}
    loads["warm"].in_flight = 2
    assert takers(strategy, loads) == {"cold"}


@pytest.mark.parametrize("strategy", HOST_STRATEGIES)
def test_a_lone_host_always_takes(strategy: str) -> None:
    assert should_take(strategy, "a", {"a": ModelLoad(slots=4, in_flight=3, taken=9)})


def test_least_loaded_goes_by_in_flight_over_slots() -> None:
    """2 of 8 busy beats 1 of 2 busy; equal ratios all pull."""
    loads = {
        "big": ModelLoad(slots=8, in_flight=2, warm=True),
        "small": ModelLoad(slots=2, in_flight=1, warm=True),
    }
    assert takers("least-loaded", loads) == {"big"}
    loads["big"].in_flight = 4
    assert takers("least-loaded", loads) == {"big", "small"}


def test_round_robin_keeps_shares_even_when_the_next_host_is_busy() -> None:
    """The host with the fewest taken goes next, even if it must free a slot first."""
    loads = {
        "slow": ModelLoad(slots=1, in_flight=1, warm=True, taken=3),
        "fast": ModelLoad(slots=4, in_flight=0, warm=True, taken=4),
    }
    assert takers("round-robin", loads) == set()
    loads["slow"].in_flight = 0
    assert takers("round-robin", loads) == {"slow"}
    loads["slow"].taken = 4
    assert takers("round-robin", loads) == {"slow", "fast"}


def test_adaptive_prefers_the_host_that_finishes_soonest() -> None:
    """Faster service wins; load makes a fast host give way; no history counts as average."""
    loads = {
        "fast": ModelLoad(slots=4, in_flight=0, warm=True, service_ms=500.0),
        "slow": ModelLoad(slots=4, in_flight=0, warm=True, service_ms=2000.0),
    }
    assert takers("adaptive", loads) == {"fast"}
    loads["fast"].in_flight = 3  # 500 x 1.75 = 875 < 2000: still fast
    assert takers("adaptive", loads) == {"fast"}
    loads["fast"].in_flight = 4  # no free slot: the slow host is the only place
    assert takers("adaptive", loads) == {"slow"}
    loads["new"] = ModelLoad(slots=4, in_flight=0, warm=True)  # average of 2000: 2000
    assert takers("adaptive", loads) == {"slow", "new"}


def test_hosts_without_slots_are_not_waited_for() -> None:
    """A host whose circuit is open (no slots) does not hold the others back."""
    loads = {
        "open": ModelLoad(slots=0, in_flight=0, warm=True, taken=0),
        "ok": ModelLoad(slots=2, in_flight=0, warm=True, taken=10),
    }
    for strategy in HOST_STRATEGIES:
        assert takers(strategy, loads) == {"ok"}
