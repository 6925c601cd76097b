"""Model choice when a request names neither a model nor a role: task rules, then balancing.

Policy only: the router feeds it what it knows (which models some host serves, and its
own view of in-flight requests, successes and latencies) and gets a model name back.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from dataclasses import dataclass

from bus.config import RoutingConfig
from schemas import ChatRequest, GenerateRequest, Request

__all__ = ["ModelStats", "Selector", "task_role"]

# Latency memory: each new request moves the average a fifth of the way.
_EWMA = 0.2


@dataclass
class ModelStats:
    """One router's view of a model: its own requests in flight and how they ended."""

    in_flight: int = 0
    successes: int = 0
    failures: int = 0
    latency_ms: float | None = None

    def finished(self, ok: bool, latency_ms: float) -> None:
        """Count a request that ended, and fold its latency into the moving average."""
        self.in_flight = max(0, self.in_flight - 1)
        if ok:
            self.successes += 1
            self.latency_ms = (
                latency_ms
                if self.latency_ms is None
                else self.latency_ms + _EWMA * (latency_ms - self.latency_ms)
            )
        else:
            self.failures += 1

    @property
    def success_rate(self) -> float:
        """Smoothed (Laplace) so a model with no history starts at one half, not zero."""
        return (self.successes + 1) / (self.successes + self.failures + 2)


def task_role(request: Request, rules: RoutingConfig) -> str | None:
    """The role the request's task calls for, or None to balance over the candidates."""
    images = False
    if isinstance(request, GenerateRequest):
        images = bool(request.images)
    elif isinstance(request, ChatRequest):
        images = any(m.images for m in request.messages)
    if images:
        return "vision"
    if request.task == "mathematical":
        return "mathematical"
    options = request.options
    num_predict = options.num_predict if options is not None else None
    if num_predict is not None and 0 <= num_predict < rules.fast_below_num_predict:
        return "fast"
    return None


class Selector:
    """Balances over candidate models with the configured strategy."""

    def __init__(
        self,
        strategy: str,
        weights: Mapping[str, float],
        rng: random.Random | None = None,
    ) -> None:
        self.strategy = strategy
        self.weights = weights  # by model name
        self._rng = rng or random.Random()
        self._turn = itertools.count()

    def choose(self, candidates: list[str], stats: Mapping[str, ModelStats]) -> str:
        """Pick one of `candidates` (model names, in the configured order)."""
        if len(candidates) == 1:
            return candidates[0]
        none = ModelStats()
        match self.strategy:
            case "round-robin":
                return candidates[next(self._turn) % len(candidates)]
            case "least-loaded":
                # Ties go round-robin, so an idle fleet still spreads its work.
                start = next(self._turn)
                k = start % len(candidates)
                order = candidates[k:] + candidates[:k]
                return min(order, key=lambda m: stats.get(m, none).in_flight)
            case "weighted":
                return self._pick(candidates, [self.weights.get(m, 1.0) for m in candidates])
            case _:  # adaptive
                return self._pick(candidates, self._scores(candidates, stats))

    def _scores(self, candidates: list[str], stats: Mapping[str, ModelStats]) -> list[float]:
        """Weight x success rate / latency / load; no history means the average latency."""
        none = ModelStats()
        known = [s.latency_ms for m in candidates if (s := stats.get(m)) and s.latency_ms]
        typical = sum(known) / len(known) if known else 1.0
        scores = []
        for model in candidates:
            s = stats.get(model, none)
            latency = s.latency_ms or typical
            weight = self.weights.get(model, 1.0)
            scores.append(weight * s.success_rate / (latency / typical) / (1 + s.in_flight))
        return scores

    def _pick(self, candidates: list[str], weights: list[float]) -> str:
        # Proportional, not greedy: every healthy model keeps a fair share of traffic.
        return self._rng.choices(candidates, weights=weights)[0]
