"""`ollamesh bench`: runs end to end and prints one JSON object (figures, never targets)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from actors.cli.bench.cpu import CpuMeter, children_named
from actors.cli.bench.harness import percentile
from tests._engine_fixtures import LlamaServer

_linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([3.0], 99, 3.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.5), ([0.0, 10.0], 99, 9.9)],
    ids=["one-value", "median-between-ranks", "p99-interpolated"],
)
def test_percentile_interpolates_between_ranks(
    values: list[float], q: float, expected: float
) -> None:
    """Percentiles interpolate linearly between the closest ranks, as numpy's default does."""
    assert percentile(values, q) == pytest.approx(expected)


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _cpu_figures(by_path: dict[str, dict[str, float]], processes: set[str]) -> None:
    """Every path of a scenario has each process's CPU ms per request, and a positive total."""
    for path, cpu in by_path.items():
        assert set(cpu) == processes | {"total"}, (path, cpu)
        assert all(isinstance(v, int | float) and v >= 0 for v in cpu.values()), (path, cpu)
        assert _positive(cpu["total"]), (path, cpu)


@_linux_only
def test_cpu_meter_reads_each_process_s_own_accounting() -> None:
    """A child that burns 0.3 s of CPU shows it in ms per request; children are found by name."""
    burn = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.3: pass\nprint('done', flush=True)\ninput()"
    with (
        subprocess.Popen(
            [sys.executable, "-c", burn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as child,
        subprocess.Popen(["sleep", "30"]) as sleeper,
    ):
        try:
            meter = CpuMeter({"client": None, "child": child.pid})
            before = meter.read()
            assert child.stdout is not None and child.stdout.readline() == "done\n"
            cpu = meter.ms_per_request(before, 2)
            assert (
                100 <= cpu["child"] <= 400 and cpu["client"] is not None and cpu["client"] >= 0
            ), cpu
            assert cpu["total"] == pytest.approx(cpu["child"] + cpu["client"], abs=0.002)
            assert sleeper.pid in children_named("sleep") and child.pid not in children_named(
                "sleep"
            )
        finally:
            child.kill()
            sleeper.kill()


def test_bench_prints_one_json_report() -> None:
    """A tiny bench run exits 0 and prints one JSON object with every figure, positive and finite."""
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "bench", "--requests", "20", "--warmup", "5", "--stream-tokens", "32"],
        capture_output=True, timeout=100, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert set(report) >= {"params", "machine", "ttft_ms", "requests_per_s", "stream_64", "targets"}
    for level in ("c1", "c32"):
        ttft = report["ttft_ms"][level]
        for path in ("direct", "ollamesh"):
            assert all(_positive(ttft[path][k]) for k in ("p50", "p99", "mean")), ttft
            assert ttft[path]["p99"] >= ttft[path]["p50"]
        assert ttft["errors"] == {"direct": 0, "ollamesh": 0}
        assert math.isfinite(ttft["added_p50"]) and math.isfinite(ttft["added_p99"])
    for rates in report["requests_per_s"].values():
        assert all(_positive(rates[k]) for k in ("direct", "ollamesh", "ratio")), rates
    streams = report["stream_64"]
    assert _positive(streams["direct"]["tokens_per_s"])
    assert all(_positive(v) for v in streams["ollamesh"].values()), streams
    assert set(report["targets"]["met"]) == {"added_ttft_p50", "added_ttft_p99", "requests_per_s"}
    assert report["machine"]["cpus"] >= 1
    if sys.platform.startswith("linux"):
        cpu = report["cpu_ms_per_request"]
        assert set(cpu) == {"c1", "c32", "c64", "stream_64"}
        for by_path in cpu.values():
            assert set(by_path) == {"direct", "ollamesh"}
            _cpu_figures(by_path, {"client", "simulator", "executor", "router", "nats_server"})


def test_http_bench_compares_direct_calls_with_the_gateway() -> None:
    """A tiny --http run exits 0 with time to first token, requests/s and CPU per process of
    every path: direct, through NATS, the gateway's Ollama and OpenAI routes."""
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "bench", "--http", "--http-requests", "8", "--http-warmup", "2"],
        capture_output=True, timeout=100, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    paths = report["paths"]
    assert paths == ["direct", "nats", "gateway_ollama", "gateway_openai"]
    ttft = report["ttft_ms"]["c1"]
    for path in paths:
        assert ttft[path]["p99"] >= ttft[path]["p50"] > 0, ttft
        assert ttft["errors"][path] == 0
    assert set(ttft["added"]) == set(paths) - {"direct"}
    assert all(math.isfinite(v["p50"]) and math.isfinite(v["p99"]) for v in ttft["added"].values())
    for level in ("c32", "c64"):
        rates = report["requests_per_s"][level]
        assert all(_positive(rates[path]) for path in paths), rates
        assert all(_positive(r) for r in rates["ratio"].values()) and set(rates["ratio"]) == set(
            paths
        ) - {"direct"}
    assert set(report["targets"]["met"]) == {"gateway_ollama", "gateway_openai"}
    if sys.platform.startswith("linux"):
        cpu = report["cpu_ms_per_request"]
        assert set(cpu) == {"c1", "c32", "c64"}
        processes = {"client", "simulator", "executor", "router", "gateway", "nats_server"}
        for by_path in cpu.values():
            assert set(by_path) == set(paths)
            _cpu_figures(by_path, processes)


def test_backend_bench_measures_a_real_engine_direct_and_through_ollamesh(
    llama_server: LlamaServer,
) -> None:
    """A tiny --backend run against llama-server: its model and slots found, every scenario
    (concurrency 1, the slots, twice the slots) with figures on both paths and no error."""
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "bench", "--backend", f"openai+{llama_server.url}",
         "--backend-requests", "8", "--backend-warmup", "2"],
        capture_output=True, timeout=100, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["params"] | {"host": None} == {
        "host": None, "kind": "openai", "model": "tiny-llama", "slots": 2,
        "requests": 8, "tokens": 16, "warmup": 2,
    }  # fmt: skip
    assert set(report["scenarios"]) == {"c1", "c2", "c4"}
    for figures in report["scenarios"].values():
        ttft = figures["ttft_ms"]
        assert all(ttft[p]["p99"] >= ttft[p]["p50"] > 0 for p in ("direct", "ollamesh")), ttft
        assert math.isfinite(ttft["added_p50"]) and math.isfinite(ttft["added_p99"])
        assert all(_positive(v) for v in figures["requests_per_s"].values()), figures
        assert figures["errors"] == {"direct": 0, "ollamesh": 0}


def test_backend_bench_names_a_host_that_does_not_answer() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "bench", "--backend", "openai+http://127.0.0.1:9"],
        capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: http://127.0.0.1:9 does not answer as an openai host")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_fleet_bench_compares_every_host_strategy() -> None:
    """A tiny skewed-fleet run exits 0 with latency, throughput and shares per strategy."""
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "bench", "--fleet", "--fleet-requests", "12",
         "--fleet-tokens", "4", "--fleet-streams", "8"],
        capture_output=True, timeout=120, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    runs = report["strategies"]
    assert set(runs) == {"round-robin", "least-loaded", "adaptive"}
    for run in runs.values():
        assert run["errors"] == 0 and sum(run["share"].values()) == 12
        assert (
            _positive(run["requests_per_s"])
            and run["latency_ms"]["p99"] >= run["latency_ms"]["p50"] > 0
        )
    assert set(report["p99_cut_vs_round_robin"]) == {"least-loaded", "adaptive"}
    assert isinstance(report["target"]["met"], bool)


def test_cache_bench_reports_hits_and_single_flight() -> None:
    """A tiny cache run exits 0 with hit figures and the upstream count of 50 requests."""
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "bench", "--cache", "--cache-requests", "20"],
        capture_output=True, timeout=120, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    ttft = report["ttft_ms"]
    assert ttft["cache_hit"]["p99"] >= ttft["cache_hit"]["p50"] > 0
    assert _positive(ttft["direct_uncached"]["p50"]) and _positive(report["hits_per_s"]["rate"])
    assert report["single_flight"]["upstream_calls"] == 1


def test_reason_bench_reports_parallelism_and_the_cost_per_step() -> None:
    """A tiny reasoning run exits 0 with the parallel ratio and the cost per step."""
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "bench", "--reason", "--reason-chains", "2"],
        capture_output=True, timeout=180, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    ratio = report["parallel"]["steps_wall_over_sum"]
    assert 0 < ratio["p50"] <= ratio["p99"] <= 1.5
    per_step = report["per_step_ms"]
    assert per_step["in_chain"]["p99"] >= per_step["in_chain"]["p50"] > 0
    assert _positive(per_step["direct_generate"]["p50"]) and math.isfinite(per_step["added_p50"])
    assert set(report["targets"]["met"]) == {"parallel_ratio", "added_per_step"}


def test_construction_bench_reports_the_document_on_one_and_three_hosts() -> None:
    """A tiny construction run exits 0 with both walls, their ratio and the fee times."""
    proc = subprocess.run(
        [sys.executable, "-m", "actors", "bench", "--construction", "--pages", "3",
         "--fee-calls", "50"],
        capture_output=True, timeout=180, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    document = report["document"]
    assert document["parts"] == 3 and document["calls"] == 4
    assert _positive(document["wall_s"]["1_host"]) and _positive(document["wall_s"]["3_hosts"])
    assert _positive(document["three_over_one"])
    fee = report["fee_per_call_us"]
    assert fee["in_process"]["p99"] >= fee["in_process"]["p50"] > 0
    assert fee["through_nats_stored"]["p50"] > 0
