"""The circuit breaker's rules, on a fake clock."""

from __future__ import annotations

from actors.executor.circuit import Circuit, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_failures_in_a_row() -> None:
    """Two failures leave it closed; the third opens it; a success in between resets."""
    c = Circuit(3, 5.0, clock=Clock())
    assert not c.failure() and not c.failure()
    c.success()
    assert not c.failure() and not c.failure()
    assert c.failure() and c.state is CircuitState.OPEN


def test_one_probe_after_the_cooldown_decides() -> None:
    """No probe before the cooldown, exactly one after; success closes, failure reopens."""
    clock = Clock()
    c = Circuit(1, 5.0, clock=clock)
    c.failure()
    assert not c.try_probe()
    clock.now += 5.0
    assert c.try_probe() and c.state is CircuitState.HALF_OPEN
    assert not c.try_probe()
    assert c.failure() and c.state is CircuitState.OPEN and c.opened_at == clock.now
    clock.now += 5.0
    assert c.try_probe()
    assert c.success() and c.state is CircuitState.CLOSED and c.failures == 0


def test_opens_when_failures_go_on_for_the_window() -> None:
    """Slow failures open it after the window even below the threshold; a success resets."""
    clock = Clock()
    c = Circuit(3, 5.0, window_s=5.0, clock=clock)
    assert not c.failure()
    clock.now += 4.9
    assert not c.expired() and not c.failure()
    c.success()
    clock.now += 1.0
    assert not c.failure()  # a new streak starts here
    clock.now += 4.9
    assert not c.expired()
    clock.now += 0.1
    assert c.expired() and c.state is CircuitState.OPEN and c.failures == 1
    assert not c.expired()  # already open
