"""`ollamesh bench --reason`: what the reasoning coordinator costs, and what it gains.

Runs nats-server, an embedded Postgres, the simulator, and an executor, a router and a
process of the prompt store and the coordinator. The plan is scripted at the simulator.
Measures, in the same run:

- parallelism: chains of 6 independent steps, each step held 250 ms at the host (its
  first token held back): the steps' wall time (first start to last end) against the sum
  of the steps' own times; 1/6 is perfect, 1 is one after another;
- the coordinator's cost: chains of steps one after another (each needs the one before),
  the simulator at full speed: a step's time in the chain (from its start to the next
  step's) against a direct `generate` through NATS of the same template, same options.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from typing import Any

import httpx

from actors.cli.bench.harness import (
    MODEL,
    fleet_with_database,
    p50_p99,
    percentile,
    progress,
    wait_for,
)
from actors.simulator.engine import Fault
from actors.simulator.scripts import Script
from bus.client import Client
from schemas import ReasonResult, encode
from schemas.reasoning import StepState

__all__ = ["reason_bench"]

_TARGETS = {"parallel_ratio_max": 0.4, "added_per_step_ms_max": 2.0}
_CONFIG = f'[reasoning]\ndecompose = "{MODEL}"\nsolve = "{MODEL}"\nsynthesise = "{MODEL}"\n'
_OPTIONS = {"num_predict": 8}
_PARALLEL = 6
_HELD_MS = 250
_SEQUENTIAL = 12
_MARK = "BENCH PLAN"


def _plan(steps: int, *, chained: bool) -> str:
    """A plan of `steps` steps, each after the one before (`chained`) or all independent."""
    return json.dumps({"steps": [
        {"id": f"S{i}", "text": f"part {i} of the count", "kind": "general",
         "depends_on": [f"S{i - 1}"] if chained and i else []}
        for i in range(steps)
    ]})  # fmt: skip


async def reason_bench(chains: int) -> dict[str, Any]:
    """Measure the coordinator on `chains` chains of each shape; return the figures."""
    prefix = f"reason{uuid.uuid4().hex[:8]}"
    async with (
        fleet_with_database(prefix, "prompts,reasoning", config_extra=_CONFIG) as (
            nats_url, sim_url, procs,
        ),
        Client(nats_url, prefix=prefix, timeout=60.0, name="bench-reason") as client,
        httpx.AsyncClient(base_url=sim_url, timeout=10.0) as sim,
    ):  # fmt: skip
        progress(f"nats {nats_url}, simulator {sim_url}, prefix {prefix}")

        async def one_step() -> None:
            await _chain(client, sim, _plan(1, chained=False))

        await wait_for("the fleet", lambda: _direct(client), 30.0, procs)
        await wait_for("the coordinator", one_step, 60.0, procs)
        progress(f"{chains} chains of {_SEQUENTIAL} steps one after another, full speed")
        gaps: list[float] = []
        direct: list[float] = []
        for _ in range(chains):
            result = await _chain(client, sim, _plan(_SEQUENTIAL, chained=True))
            starts = [s.started_at or 0.0 for s in result.steps]
            gaps += [(b - a) * 1000 for a, b in itertools.pairwise(starts)]
            direct += [await _direct(client) for _ in range(_SEQUENTIAL - 1)]
        progress(f"{chains} chains of {_PARALLEL} independent steps, each held {_HELD_MS} ms")
        fault = Fault(kind="slow_first_token", delay_ms=_HELD_MS)
        (await sim.post("/_sim/faults", content=encode(fault))).raise_for_status()
        ratios: list[float] = []
        walls: list[float] = []
        for _ in range(chains):
            t0 = time.perf_counter()
            result = await _chain(client, sim, _plan(_PARALLEL, chained=False))
            walls.append((time.perf_counter() - t0) * 1000)
            ratios.append(_parallel_ratio(result))
    added50 = percentile(gaps, 50) - percentile(direct, 50)
    ratio50 = percentile(ratios, 50)
    return {
        "chains": chains,
        "parallel": {
            "steps": _PARALLEL,
            "held_ms": _HELD_MS,
            "steps_wall_over_sum": p50_p99(ratios),
            "chain_wall_ms": p50_p99(walls, 1),
        },
        "per_step_ms": {
            "steps": _SEQUENTIAL,
            "in_chain": p50_p99(gaps),
            "direct_generate": p50_p99(direct),
            "added_p50": round(added50, 3),
            "added_p99": round(percentile(gaps, 99) - percentile(direct, 99), 3),
        },
        "targets": _TARGETS
        | {
            "met": {
                "parallel_ratio": ratio50 < _TARGETS["parallel_ratio_max"],
                "added_per_step": added50 < _TARGETS["added_per_step_ms_max"],
            }
        },
    }


async def _chain(client: Client, sim: httpx.AsyncClient, plan: str) -> ReasonResult:
    """One chain whose plan is `plan` (the simulator's only script)."""
    (await sim.delete("/_sim/scripts")).raise_for_status()
    script = Script(match="Break the problem below", text=plan)
    (await sim.post("/_sim/scripts", content=encode(script))).raise_for_status()
    result = await client.reason(
        f"{_MARK} {uuid.uuid4().hex}", stream=False, options=_OPTIONS, max_steps=_SEQUENTIAL
    )
    assert isinstance(result, ReasonResult)
    if any(s.state is not StepState.DONE for s in result.steps):
        raise AssertionError(f"chain {result.chain_id} has steps not done")
    return result


def _parallel_ratio(result: ReasonResult) -> float:
    """The steps' wall time over the sum of their own times."""
    spans = [(s.started_at or 0.0, s.finished_at or 0.0) for s in result.steps]
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return wall / sum(end - start for start, end in spans)


async def _direct(client: Client) -> float:
    """A step's call made directly: the same template and options, through NATS."""
    variables = {"query": f"{_MARK} direct", "step": "part 1 of the count", "context": ""}
    t0 = time.perf_counter()
    stream = await client.generate(
        MODEL, stream=True, prompt_template="reasoning_step", variables=variables,
        options=_OPTIONS,
    )  # fmt: skip
    await stream.text()
    return (time.perf_counter() - t0) * 1000
