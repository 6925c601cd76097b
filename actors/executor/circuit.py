"""A circuit breaker per host and model: policy only, on an injectable clock."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["Circuit", "CircuitState"]


class CircuitState(enum.StrEnum):
    """Closed: work flows. Open: none, until the cooldown ends. Half-open: one probe."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Circuit:
    """Opens after `threshold` failures in a row, or when failures went on for `window_s`
    without a success; after `cooldown_s` one probe decides."""

    def __init__(
        self,
        threshold: int,
        cooldown_s: float,
        *,
        window_s: float = float("inf"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.window_s = window_s
        self._clock = clock
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.failing_since: float | None = None
        self.opened_at = 0.0

    @property
    def probe_at(self) -> float:
        """When an open circuit may let its probe through (clock time)."""
        return self.opened_at + self.cooldown_s

    def try_probe(self) -> bool:
        """Let one probe through if the circuit is open and cooled down."""
        if self.state is CircuitState.OPEN and self._clock() >= self.probe_at:
            self.state = CircuitState.HALF_OPEN
            return True
        return False

    def success(self) -> bool:
        """Record a success; return True if it closed the circuit (a probe succeeded)."""
        closed_now = self.state is not CircuitState.CLOSED
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.failing_since = None
        return closed_now

    def failure(self) -> bool:
        """Record a failure; return True if it opened the circuit."""
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = self._clock()
        if self.state is CircuitState.OPEN:
            return False
        if self.state is CircuitState.HALF_OPEN or self.failures >= self.threshold:
            return self._open()
        return self.expired()

    def expired(self) -> bool:
        """Open the circuit if failures have gone on for the window; True if it opened."""
        since = self.failing_since
        if self.state is not CircuitState.CLOSED or since is None:
            return False
        return self._clock() - since >= self.window_s and self._open()

    def _open(self) -> bool:
        self.state = CircuitState.OPEN
        self.opened_at = self._clock()
        return True
