"""`ollamesh bench --construction`: a long PDF analysed on one host and on three, and what
the HOAI fee calculation costs per call.

The document: a PDF of `pages` pages of text (about 3,000 characters each), split into
parts analysed at once, then combined. The fleet: 1 or 3 simulated hosts answering 200
tokens/s per stream, 4 requests at a time each, with a router, the executors and the
analyzer in this process (one nats-server and one embedded Postgres for both runs). The
fee: `hoai_fee` called in this process, and `construction.hoai` with `analysis: false`
through NATS (its result stored each time: `fresh`).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from actors.cli.bench.harness import p50_p99, progress
from actors.cli.bench.pdf import pdf
from actors.construction.fees import hoai_fee
from actors.runtime.supervisor import Stack
from actors.simulator import SimulatorServer
from actors.store import EmbeddedPostgres
from bus.client import Client
from bus.config import Config
from bus.server import EmbeddedNats
from schemas.construction import HoaiFeeRequest

__all__ = ["construction_bench"]

_MODEL = "bench:1b"
_TOKENS_PER_S, _SLOTS, _NUM_PREDICT = 200.0, 4, 32
_RUNS = 3
_LINE = "The contractor shall keep the crane base inspected and log each check (DIN 4420)."
_FEE = {"eligible_costs": 1_234_567, "zone": "III", "phases": [1, 2, 3, 4, 5],
        "conversion": {}, "incidental_costs_pct": 5}  # fmt: skip


async def construction_bench(pages: int, fee_calls: int) -> dict[str, Any]:
    """Measure the document analysis on 1 and 3 hosts and the fee per call."""
    fee_us = _fee_in_process(fee_calls)
    data = pdf([[f"Page {p}, clause {i}: {_LINE}" for i in range(36)] for p in range(pages)])
    with tempfile.TemporaryDirectory(prefix="ollamesh-bench-pg-") as tmp:
        async with EmbeddedNats() as server, EmbeddedPostgres(Path(tmp)) as pg:
            runs = {}
            for hosts in (1, 3):
                runs[hosts] = await _document(server.url, pg.url(), hosts, data, fee_calls)
                progress(f"{hosts} host(s): {runs[hosts]['wall_s']} s per document")
    one, three = runs[1]["wall_s"], runs[3]["wall_s"]
    return {
        "document": {
            "pages": pages, "bytes": len(data), "parts": runs[1]["parts"],
            "calls": runs[1]["calls"], "runs": _RUNS,
            "hosts": {"tokens_per_s": _TOKENS_PER_S, "slots": _SLOTS, "num_predict": _NUM_PREDICT},
            "wall_s": {"1_host": one, "3_hosts": three},
            "three_over_one": round(three / one, 3),
        },
        "fee_per_call_us": {
            "in_process": p50_p99(fee_us, 1),
            "through_nats_stored": p50_p99(runs[1]["fee_ms"], 3) | {"unit": "ms"},
        },
    }  # fmt: skip


def _fee_in_process(calls: int) -> list[float]:
    request = msgspec.convert(_FEE, HoaiFeeRequest)
    out = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        hoai_fee(request)
        out.append((time.perf_counter_ns() - t0) / 1000)
    return out


async def _document(
    url: str, database: str, hosts: int, data: bytes, fee_calls: int
) -> dict[str, Any]:
    sims = [
        SimulatorServer([_MODEL], tokens_per_second=_TOKENS_PER_S, num_parallel=_SLOTS)
        for _ in range(hosts)
    ]
    async with contextlib.AsyncExitStack() as stack:
        for sim in sims:
            await sim.start()
            stack.push_async_callback(sim.kill)
        prefix = f"doc{uuid.uuid4().hex[:8]}"
        config = msgspec.convert(
            {
                "prefix": prefix, "ollama_hosts": [s.url for s in sims], "nats": {"url": url},
                "roles": {"primary": _MODEL, "fast": _MODEL, "backup": _MODEL},
                "database": {"url": database}, "metrics": {"port": None},
                "executor": {"max_inflight_per_model": _SLOTS, "shutdown_grace_s": 2.0},
            },
            Config,
        )  # fmt: skip
        await stack.enter_async_context(
            Stack(config, actors=("router", "executor", "construction"))
        )
        client = await stack.enter_async_context(
            Client(url, prefix=prefix, timeout=600.0, name="construction-bench")
        )
        walls = []
        calls_before = sum(s.engine.stats.generations for s in sims)
        for _ in range(_RUNS):
            t0 = time.perf_counter()
            result = await client.construction.document(
                "risk", data=data, filename="bench.pdf", fresh=True,
                options={"num_predict": _NUM_PREDICT},
            )  # fmt: skip
            walls.append(time.perf_counter() - t0)
        calls = (sum(s.engine.stats.generations for s in sims) - calls_before) // _RUNS
        fee_ms = []
        for _ in range(min(fee_calls, 500) if hosts == 1 else 0):
            t0 = time.perf_counter()
            await client.construction.hoai(analysis=False, fresh=True, **_FEE)
            fee_ms.append((time.perf_counter() - t0) * 1000)
    return {
        "wall_s": round(statistics.median(walls), 3), "parts": result.parts, "calls": calls,
        "fee_ms": fee_ms,
    }  # fmt: skip
