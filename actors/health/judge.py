"""How a host's state follows from one check and from what its executors report."""

from __future__ import annotations

from actors.backends.admin import Check
from schemas.fleet import HostState
from schemas.internal import HostInfo

__all__ = ["judge"]


def judge(check: Check, reports: list[HostInfo], slow_ms: float) -> tuple[HostState, str]:
    """Return the host's state and why.

    `down`: none of the check's calls answered. `loading`: the engine answers, but is
    still loading its model. `degraded`: it answers, but a call failed, the check took
    longer than `slow_ms`, an executor cannot reach it, or a model's circuit is open
    there. `up` otherwise.
    """
    if not check.reachable:
        return HostState.DOWN, check.failures[0] if check.failures else "no answer"
    if check.loading:
        return HostState.LOADING, "the engine is loading its model"
    problems = list(check.failures)
    if check.latency_ms > slow_ms:
        problems.append(f"slow: the check took {check.latency_ms:.0f} ms")
    for report in reports:
        if not report.up:
            problems.append(f"executor {report.executor} cannot reach it")
        if report.blocked:
            problems.append(f"circuit open for {', '.join(report.blocked)}")
    if problems:
        return HostState.DEGRADED, "; ".join(problems)
    return HostState.UP, ""
