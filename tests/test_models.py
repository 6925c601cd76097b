"""Model management across the fleet: list, show, ps, pull (progress, no duplicates, typed
failures), load, unload, delete, pins, automatic pulls, fixed load-time options."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from bus.client import Client
from bus.errors import (
    BadRequest,
    ModelNotFound,
    NoHealthyHost,
    Timeout,
    Unavailable,
    UpstreamError,
)
from schemas.fleet import HostState, PullProgress
from tests.helpers import eventually

MODELS = ["llama3.2:3b", "qwen2.5:7b"]
HEALTH = ("router", "executor", "health")
# 2 GB in about half a second: long enough to overlap, short enough for a test.
PULL_RATE = 4e9


async def _ps(url: str) -> dict[str, dict[str, object]]:
    async with httpx.AsyncClient(base_url=url) as http:
        return {m["name"]: m for m in (await http.get("/api/ps")).json()["models"]}


async def test_list_show_ps_load_unload_delete_across_hosts(
    sim_factory, stack_factory, client: Client
) -> None:
    a = await sim_factory(models=MODELS)
    b = await sim_factory(models=MODELS[:1])
    await stack_factory([a.url, b.url], actors=HEALTH)
    fleet = client.fleet
    listed = await fleet.models("list")
    assert {r.host: sorted(m.name for m in r.models or []) for r in listed.results} == {
        a.url: sorted(MODELS),
        b.url: ["llama3.2:3b"],
    }
    shown = await fleet.models("show", "qwen2.5:7b")
    assert [r.host for r in shown.results] == [a.url]
    assert "completion" in shown.results[0].info["capabilities"]  # type: ignore[index]

    # Load puts the model in memory on every host that has it, without generating text.
    loaded = await fleet.models("load", "llama3.2:3b", keep_alive="1h")
    assert sorted(r.host for r in loaded.results) == sorted([a.url, b.url])
    assert "llama3.2:3b" in await _ps(a.url) and "llama3.2:3b" in await _ps(b.url)
    assert a.engine.stats.generations == 0
    ps = await fleet.models("ps", host=b.url)
    assert [m.name for m in ps.results[0].loaded or []] == ["llama3.2:3b"]

    await fleet.models("unload", "llama3.2:3b", host=a.url)
    assert "llama3.2:3b" not in await _ps(a.url) and "llama3.2:3b" in await _ps(b.url)

    await fleet.models("delete", "qwen2.5:7b")
    assert a.engine.find("qwen2.5:7b") is None

    async def gone_from_view() -> bool:
        status = await fleet.status()
        host = next(h for h in status.hosts if h.host == a.url)
        return "qwen2.5:7b" not in {m.name for m in host.models}

    await eventually(gone_from_view)  # a change made through the monitor is checked at once


async def test_an_embedding_model_loads_through_embed(
    sim_factory, stack_factory, client: Client
) -> None:
    sim = await sim_factory(models=["nomic-embed-text"])
    await stack_factory([sim.url], actors=("health",))
    await client.fleet.models("load", "nomic-embed-text")
    assert "nomic-embed-text:latest" in await _ps(sim.url)


@pytest.mark.parametrize(
    ("verb", "model", "host", "error", "text"),
    [
        ("show", "nope:1b", None, ModelNotFound, "pull it first"),
        ("load", "nope:1b", None, ModelNotFound, "pull it first"),
        ("show", None, None, BadRequest, "needs a model"),
        ("list", None, "http://elsewhere:11434", BadRequest, "unknown host"),
        ("pull", "missing-model", None, ModelNotFound, "registry"),
        ("delete", "nope:1b", "self", ModelNotFound, "not found"),
    ],
)
async def test_bad_model_requests_are_typed_errors(
    sim_factory, stack_factory, client: Client, verb, model, host, error, text
) -> None:
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=("health",))
    with pytest.raises(error, match=text):
        await client.fleet.models(verb, model, host=sim.url if host == "self" else host)


async def test_no_host_up_is_no_healthy_host(sim_factory, stack_factory, client: Client) -> None:
    sim = await sim_factory(models=MODELS)
    await sim.kill()
    await stack_factory([sim.url], actors=("health",))
    assert (await client.fleet.status()).hosts[0].state is HostState.DOWN
    with pytest.raises(NoHealthyHost):
        await client.fleet.models("list")


async def test_a_pull_streams_progress_and_identical_pulls_share_one_download(
    sim_factory, stack_factory, client: Client
) -> None:
    sim = await sim_factory(models=MODELS, pull_bytes_per_second=PULL_RATE)
    await stack_factory([sim.url], actors=("health",))
    seen: list[PullProgress] = []
    first, second = await asyncio.gather(
        client.fleet.pull("mistral:7b", on_progress=seen.append),
        client.fleet.pull("mistral:7b", host=sim.url),
    )
    assert sorted([first.results[0].status, second.results[0].status]) == ["joined", "pulled"]
    assert sim.engine.stats.requests["/api/pull"] == 1
    assert sim.engine.find("mistral:7b") is not None
    weights = [p.completed for p in seen if p.total > 1_000_000 and p.completed]
    assert weights == sorted(weights) and weights[-1] == max(p.total for p in seen)
    assert seen[-1].done and seen[-1].status == "success" and seen[-1].error is None


async def test_two_monitors_never_pull_the_same_model_onto_a_host_twice(
    sim_factory, stack_factory
) -> None:
    sim = await sim_factory(models=MODELS, pull_bytes_per_second=PULL_RATE)
    one = await stack_factory([sim.url], actors=("health",))
    two = await stack_factory([sim.url], actors=("health",))
    assert one.health is not None and two.health is not None
    outcomes = await asyncio.gather(
        one.health.pulls.pull(sim.url, "mistral:7b"), two.health.pulls.pull(sim.url, "mistral:7b")
    )
    assert sorted(outcomes) == ["joined", "pulled"]
    assert sim.engine.stats.requests["/api/pull"] == 1


async def test_a_full_disk_is_a_typed_failure_per_host(
    sim_factory, stack_factory, client: Client
) -> None:
    """One host has room, the other does not: the reply says which; the room one pulled."""
    roomy = await sim_factory(models=MODELS)
    full = await sim_factory(models=MODELS, disk_bytes=8_000_000_000)
    await stack_factory([roomy.url, full.url], actors=("health",))
    reply = await client.fleet.pull("llama3.3:70b")
    results = {r.host: r for r in reply.results}
    assert results[roomy.url].ok and results[roomy.url].status == "pulled"
    failed = results[full.url]
    assert not failed.ok and failed.error is not None
    assert failed.error.code == "upstream_error" and "disk is full" in failed.error.message
    assert not failed.error.retryable
    with pytest.raises(UpstreamError, match="disk is full"):
        await client.fleet.pull("llama3.3:70b", host=full.url)


async def test_a_host_gone_mid_pull_fails_the_pull(
    sim_factory, stack_factory, client: Client
) -> None:
    sim = await sim_factory(models=MODELS, pull_bytes_per_second=1e9)
    await stack_factory([sim.url], actors=("health",))
    started = asyncio.Event()

    def progress(event: PullProgress) -> None:
        if event.completed:
            started.set()

    pull = asyncio.ensure_future(client.fleet.pull("mistral:7b", on_progress=progress))
    await asyncio.wait_for(started.wait(), 10)
    await sim.kill()
    with pytest.raises(UpstreamError, match="went away"):
        await pull


async def test_pinned_roles_stay_loaded_and_load_options_are_fixed(
    sim_factory, stack_factory, client: Client
) -> None:
    """`fast` is pinned: the monitor loads it forever, and a request asking keep_alive 0
    does not unload it. `primary` (qwen) is warmed: loaded at start, for Ollama's usual
    keep_alive, with its fixed num_ctx; a request asking another num_ctx does not make
    the host reload it with that context."""
    sim = await sim_factory(models=MODELS)
    await stack_factory(
        [sim.url],
        actors=HEALTH,
        health={"pin": ["fast"], "warm": ["primary"]},
        load_options={"primary": {"num_ctx": 8192}},
    )

    async def loaded() -> bool:
        return set(await _ps(sim.url)) == {"llama3.2:3b", "qwen2.5:7b"}

    await eventually(loaded)
    ps = await _ps(sim.url)
    assert ps["llama3.2:3b"]["expires_at"] > "2100" > ps["qwen2.5:7b"]["expires_at"]
    assert ps["qwen2.5:7b"]["context_length"] == 8192
    await client.generate("fast", "hi", keep_alive=0, options={"num_predict": 2})
    assert "llama3.2:3b" in await _ps(sim.url)
    await client.generate("qwen2.5:7b", "hi", options={"num_ctx": 2048, "num_predict": 2})
    assert (await _ps(sim.url))["qwen2.5:7b"]["context_length"] == 8192


async def test_role_models_a_host_lacks_are_pulled_when_auto_pull_is_on(
    sim_factory, stack_factory
) -> None:
    sim = await sim_factory(models=MODELS)
    await stack_factory(
        [sim.url],
        actors=("health",),
        roles={"primary": "qwen2.5:7b", "fast": "mistral:7b", "backup": "missing-backup"},
        health={"auto_pull": True},
    )

    await eventually(lambda: sim.engine.find("mistral:7b") is not None)
    assert sim.engine.find("missing-backup") is None  # not in the registry: logged, not retried


async def test_a_local_ollama_is_started_when_auto_start_is_on(
    sim_factory, stack_factory, client: Client, tmp_path: Path, monkeypatch
) -> None:
    """A stand-in `ollama` binary on PATH serves the simulator where OLLAMA_HOST says."""
    placeholder = await sim_factory(models=MODELS)
    url = placeholder.url
    await placeholder.kill()  # a free port nobody listens on
    binary = tmp_path / "ollama"
    binary.write_text(
        textwrap.dedent(f"""\
            #!{sys.executable}
            import os, sys
            host, port = os.environ["OLLAMA_HOST"].rsplit(":", 1)
            assert sys.argv[1:] == ["serve"], sys.argv
            os.execv({sys.executable!r}, [{sys.executable!r}, "-m", "actors", "sim",
                     "--host", host, "--port", port, "--models", "llama3.2:3b"])
        """)
    )
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    stack = await stack_factory([url], actors=("health",), health={"auto_start": True})

    async def up() -> bool:
        hosts = (await client.fleet.status()).hosts
        return hosts[0].state is HostState.UP

    await eventually(up, timeout=20.0)
    await stack.stop(grace=1.0)
    with pytest.raises(httpx.ConnectError):  # what the monitor started, it stopped
        async with httpx.AsyncClient(base_url=url) as http:
            await http.get("/api/version")


async def test_a_pull_joined_from_another_monitor_fails_cleanly_if_its_owner_stops(
    sim_factory, stack_factory
) -> None:
    """The monitor pulling stops mid-pull: the one waiting on it is told, never left hanging."""
    sim = await sim_factory(models=MODELS, pull_bytes_per_second=1e9)
    one = await stack_factory([sim.url], actors=("health",))
    two = await stack_factory([sim.url], actors=("health",))
    assert one.health is not None and two.health is not None
    owner = asyncio.ensure_future(one.health.pulls.pull(sim.url, "mistral:7b"))
    await eventually(lambda: sim.engine.stats.requests["/api/pull"] == 1)
    joiner = asyncio.ensure_future(two.health.pulls.pull(sim.url, "mistral:7b"))
    await eventually(lambda: two.health.pulls.following(sim.url, "mistral:7b"))
    await one.stop(grace=0.1)
    with pytest.raises(Unavailable, match="stopped"):
        await asyncio.wait_for(joiner, 5)
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert sim.engine.stats.requests["/api/pull"] == 1


async def test_a_pull_slower_than_its_timeout_is_a_typed_timeout(
    sim_factory, stack_factory, client: Client
) -> None:
    sim = await sim_factory(models=MODELS, pull_bytes_per_second=1e8)  # 4 GB: 40 s
    await stack_factory([sim.url], actors=("health",), health={"pull_timeout_s": 0.5})
    seen: list[PullProgress] = []
    with pytest.raises(Timeout, match="longer than"):
        await client.fleet.pull("mistral:7b", on_progress=seen.append)
    assert sim.engine.find("mistral:7b") is None
    assert seen and seen[-1].done and seen[-1].error is not None


async def test_progress_reaches_a_client_that_names_a_model_without_its_tag(
    sim_factory, stack_factory, client: Client
) -> None:
    """`tinyllama` is pulled as `tinyllama:latest`: its progress still reaches the caller."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=("health",))
    seen: list[PullProgress] = []
    reply = await client.fleet.pull("tinyllama", on_progress=seen.append)
    assert reply.model == "tinyllama:latest" and reply.results[0].status == "pulled"
    assert seen and seen[-1].done and seen[-1].model == "tinyllama:latest"
