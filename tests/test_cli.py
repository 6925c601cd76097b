"""The `ollamesh` command as a user runs it: up, generate, chat, demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from bus.client import Client
from tests.helpers import eventually, ollamesh_up

MODELS = ["llama3.2:3b", "qwen2.5:7b"]


async def run(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b"", timeout: float = 60
):
    """Run `python -m actors ARGS`; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "actors", *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_generate_streams_to_the_terminal(
    sim_factory, stack_factory, nats_server, prefix
) -> None:
    """`ollamesh generate PROMPT -m ROLE` prints the answer and the serving host."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    code, out, err = await run(
        "generate", "hello there", "-m", "fast", "--seed", "4", "--num-predict", "6",
        "--nats", nats_server.url, "--prefix", prefix,
    )  # fmt: skip
    assert code == 0, err
    assert len(out.split()) == 6
    assert "llama3.2:3b" in err and sim.url in err


async def test_chat_reads_a_conversation_from_stdin(
    sim_factory, stack_factory, nats_server, prefix
) -> None:
    """`ollamesh chat` answers each line of stdin, keeping the history."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    code, out, err = await run(
        "chat", "-m", "primary", "--num-predict", "5", "--nats", nats_server.url, "--prefix", prefix,
        stdin=b"first question\nsecond question\n",
    )  # fmt: skip
    assert code == 0, err
    assert len([line for line in out.splitlines() if line.strip()]) == 2


async def test_a_typed_error_is_one_line_not_a_traceback(
    sim_factory, stack_factory, nats_server, prefix
) -> None:
    """An unknown model (with no fallback configured) exits 1 with `error: model_not_found`."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], routing={"default_fallbacks": []})
    code, _, err = await run(
        "generate", "x", "-m", "ghost:1b", "--nats", nats_server.url, "--prefix", prefix
    )
    assert code == 1
    assert err.startswith("error: model_not_found:") and "Traceback" not in err


async def test_up_serves_and_stops_cleanly_on_sigterm(
    sim_factory, nats_server, prefix, tmp_path
) -> None:
    """`ollamesh up` (with its embedded Postgres) serves requests, records them for
    `ollamesh stats`, and on SIGTERM drains and exits 0 with JSON logs."""
    sim = await sim_factory(models=MODELS)
    env = {
        **os.environ,
        "NATS_URL": nats_server.url,
        "OLLAMA_HOSTS": sim.url,
        "OLLAMESH_PREFIX": prefix,
        "XDG_DATA_HOME": str(tmp_path),  # the embedded Postgres goes here
    }
    proc = await ollamesh_up(env)
    assert proc.stderr is not None
    try:
        async with Client(nats_server.url, prefix=prefix, timeout=10) as client:
            result = await client.generate("llama3.2:3b", "hi", options={"num_predict": 3})
            assert result.eval_count == 3

            async def recorded() -> bool:
                return any(r.model == "llama3.2:3b" for r in (await client.stats()).windows["1m"])

            await eventually(recorded)
        code, out, _ = await run(
            "stats", "--window", "1m", "--nats", nats_server.url, "--prefix", prefix
        )
        assert code == 0 and "llama3.2:3b" in out and "100.0%" in out, out
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 30)
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events = [
        json.loads(line)["event"] for line in rest.decode().splitlines() if line.startswith("{")
    ]
    assert "signal_received" in events and events[-1] == "stack_stopped"


async def test_up_with_a_bad_config_says_why(tmp_path) -> None:
    """A config error is one line on stderr and exit code 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[executor]\nmax_inflight_per_model = -1\n")
    code, _, err = await run("up", "--config", str(bad))
    assert code == 2 and "max_inflight_per_model" in err and "Traceback" not in err


async def test_demo_runs_the_tour_and_exits_zero() -> None:
    """`ollamesh demo` on embedded defaults passes every step of its tour."""
    code, out, err = await run("demo", "--tokens-per-second", "400", timeout=120)
    assert code == 0, out + err
    assert "demo passed" in out
    for step in ("streamed answer", "non-streamed answer", "failover", "cancel"):
        assert step in out


async def test_up_with_an_unknown_actor_says_which() -> None:
    """Naming an actor that does not exist is a one-line error, exit code 2."""
    code, _, err = await run("up", "--actors", "router,wizard")
    assert code == 2 and "wizard" in err and "Traceback" not in err


async def test_prompts_from_the_terminal(
    database_url, sim_factory, stack_factory, nats_server, prefix
) -> None:
    """put from stdin, render with variables (unused ones reported), list, delete."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=("prompts",), database={"url": database_url})
    bus = ("--nats", nats_server.url, "--prefix", prefix)
    code, out, _ = await run(
        "prompts", "put", "site", "-", "--param", "temperature=0.2", *bus,
        stdin=b"Check {{site}} with {{crew}} workers",
    )  # fmt: skip
    assert code == 0 and "site version 1: variables site, crew" in out
    code, out, err = await run(
        "prompts", "render", "site", "--var", "site=Berlin", "--var", "crew=12", "--var",
        "x=1", *bus,
    )  # fmt: skip
    assert (
        code == 0 and out.strip() == "Check Berlin with 12 workers" and "unused variables: x" in err
    )
    code, out, _ = await run("prompts", "list", *bus)
    assert code == 0 and "site" in out and "hoai_analysis_template" in out
    code, _, err = await run("prompts", "render", "site", "--var", "site=x", *bus)
    assert code == 1 and err.startswith("error: bad_request: missing template variables: crew")
    code, out, _ = await run("prompts", "delete", "site", *bus)
    assert code == 0 and "deleted 1 version(s) of site" in out


async def test_models_and_status_from_the_terminal(
    sim_factory, stack_factory, nats_server, prefix
) -> None:
    """`ollamesh models pull` shows per-host progress and outcomes; `status` the table."""
    a = await sim_factory(models=MODELS, pull_bytes_per_second=4e9)
    b = await sim_factory(models=MODELS[:1], disk_bytes=4_000_000_000)
    await stack_factory([a.url, b.url], actors=("router", "executor", "health"))
    bus = ("--nats", nats_server.url, "--prefix", prefix)
    code, out, err = await run("models", "pull", "mistral:7b", *bus)
    assert code == 1, err  # one host's disk is full
    assert f"{a.url}: pulled" in out and f"{b.url}: upstream_error" in out and "disk" in out
    assert "pulling" in err or "success" in err  # the progress bars
    code, out, err = await run("models", "load", "qwen2.5:7b", "--keep-alive", "-1", *bus)
    assert code == 0 and f"{a.url}: loaded" in out, err
    code, out, err = await run("models", "ps", *bus)
    assert code == 0 and "qwen2.5:7b" in out, err
    code, out, err = await run("models", "show", "nope", *bus)
    assert code == 1 and "model_not_found" in err and "Traceback" not in err
    code, out, err = await run("status", *bus, env={"COLUMNS": "200"})
    assert code == 0, err
    lines = out.splitlines()
    assert any(a.url in line and " up " in line for line in lines), out
    row = next(line for line in lines if "qwen2.5:7b" in line)  # only host a has it
    assert "yes" in row and "GB" in row and "0/4" in row and "closed" in row, out


async def test_status_watch_redraws_until_interrupted(
    sim_factory, stack_factory, nats_server, prefix
) -> None:
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=("health",))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "actors", "status", "--watch", "--interval", "0.1",
        "--nats", nats_server.url, "--prefix", prefix,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    titles = 0
    async with asyncio.timeout(30):
        while titles < 3:
            line = (await proc.stdout.readline()).decode()
            assert line, "status --watch ended by itself"
            titles += line.startswith("ollamesh fleet: 1 hosts")
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 130 and "Traceback" not in err.decode()
