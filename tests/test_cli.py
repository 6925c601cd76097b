"""The `ollamesh` command as a user runs it: up, generate, chat, demo."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from asyncio.subprocess import PIPE, Process
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from nats.aio.msg import Msg

from actors.cli.bench.pdf import pdf
from actors.simulator import Script
from bus.client import Client
from bus.connection import NATS
from bus.subjects import Subjects, canonical_model
from tests.helpers import eventually, ollamesh_up, up_env

MODELS = ["llama3.2:3b", "qwen2.5:7b"]
# After SIGINT a command ends well within a second or two; this bound only tells a
# process that ended from one that hangs, on a busy machine too.
_ENDS_WITHIN_S = 8.0
# How long a command may take to get going (start Python, connect, reach the work).
_STARTS_WITHIN_S = 60.0


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


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick, released at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_up_serves_and_stops_cleanly_on_sigterm(
    sim_factory, nats_server, prefix, tmp_path
) -> None:
    """`ollamesh up` (with its embedded Postgres) serves requests, over NATS and through
    its HTTP gateway, records them for `ollamesh stats`, and on SIGTERM drains and exits 0
    with JSON logs."""
    sim = await sim_factory(models=MODELS)
    port = free_port()
    # The embedded Postgres goes into XDG_DATA_HOME.
    env = up_env(nats_server.url, sim.url, prefix=prefix, XDG_DATA_HOME=str(tmp_path),
                 OLLAMESH_GATEWAY_PORT=str(port))  # fmt: skip
    proc = await ollamesh_up(env)
    assert proc.stderr is not None
    try:
        async with Client(nats_server.url, prefix=prefix, timeout=10) as client:
            result = await client.generate("llama3.2:3b", "hi", options={"num_predict": 3})
            assert result.eval_count == 3
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                body = {"model": "llama3.2:3b", "prompt": "hi", "stream": False,
                        "options": {"num_predict": 2}}  # fmt: skip
                assert (await http.post("/api/generate", json=body)).json()["eval_count"] == 2

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


async def test_status_and_models_show_an_engine_for_what_it_is(
    sim_factory, stack_factory, nats_server, prefix, client: Client
) -> None:
    """An OpenAI-compatible host: its kind and busy slots in `status`, and `not_supported`
    for a pull, beside the Ollama host's outcome."""
    ollama = await sim_factory(models=MODELS[:1])
    engine = await sim_factory(models=["tiny.gguf"], api="openai", num_parallel=3)
    await stack_factory(
        [ollama.url, f"openai+{engine.url}"], actors=("router", "executor", "health")
    )
    bus = ("--nats", nats_server.url, "--prefix", prefix)

    async def checked() -> bool:
        status = await client.fleet.status()
        return any(h.host == engine.url and h.slots == 3 for h in status.hosts)

    await eventually(checked, timeout=10.0)
    code, out, err = await run("status", *bus, env={"COLUMNS": "200"})
    assert code == 0 and f"{engine.url} (openai, 0/3 slots busy)" in out, out + err
    code, out, err = await run("models", "pull", "mistral:7b", *bus)
    assert code == 1, err  # the engine refused
    assert f"{ollama.url}: pulled" in out, out
    assert f"{engine.url}: not_supported" in out and "cannot pull" in out, out


def _sigint_as_in_a_terminal() -> None:
    """In the child: SIGINT at its default disposition, as Ctrl-C in a terminal finds it.

    A test run started as a shell script's background job ignores SIGINT, and children
    inherit that: the signal would never arrive.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def start(*args: str, env: dict[str, str] | None = None, stdin: bool = False) -> Process:
    """Start `python -m actors ARGS` with its output piped, for a test to interrupt."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "actors", *args,
        stdin=PIPE if stdin else asyncio.subprocess.DEVNULL, stdout=PIPE, stderr=PIPE,
        env={**os.environ, **(env or {})}, preexec_fn=_sigint_as_in_a_terminal,
    )  # fmt: skip


async def interrupt(proc: Process) -> str:
    """SIGINT `proc`; assert it ended (exit 130, no traceback) and return its stderr.

    Its stdin stays open meanwhile: end of input would end some commands by itself.
    """
    assert proc.stdout is not None and proc.stderr is not None
    proc.send_signal(signal.SIGINT)
    try:
        _, err, _ = await asyncio.wait_for(
            asyncio.gather(proc.stdout.read(), proc.stderr.read(), proc.wait()), _ENDS_WITHIN_S
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text, text
    return text


async def lines_until(stream: asyncio.StreamReader | None, done: Callable[[str], bool]) -> None:
    """Read lines from `stream` until one makes `done` true; fail if the stream ends."""
    assert stream is not None
    async with asyncio.timeout(_STARTS_WITHIN_S):
        while not done(line := (await stream.readline()).decode()):
            assert line, "the command ended by itself"


async def test_status_watch_redraws_until_interrupted(
    sim_factory, stack_factory, nats_server, prefix
) -> None:
    """`status --watch` redraws the table until SIGINT, then ends at once with 130."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=("health",))
    proc = await start(
        "status", "--watch", "--interval", "0.1", "--nats", nats_server.url, "--prefix", prefix
    )
    titles = 0

    def third_title(line: str) -> bool:
        nonlocal titles
        titles += line.startswith("ollamesh fleet: 1 hosts")
        return titles == 3

    await lines_until(proc.stdout, third_title)
    await interrupt(proc)


def _subject(subjects: Subjects, name: str) -> str:
    """The subject named `name` (`stats`, `prompts.list`, `models.load`, ...)."""
    family, _, verb = name.partition(".")
    if family == "prompts":
        return subjects.prompts(verb)
    if family == "models":
        return subjects.models(verb)
    if family == "reasoning":
        return subjects.reasoning(verb)
    if family == "construction":
        return subjects.construction(verb)
    if family == "keys":
        return subjects.keys(verb)
    return str(getattr(subjects, name))


def _asking(subject: str, *args: str) -> object:
    return pytest.param(subject, list(args), id=" ".join(args))


@pytest.mark.parametrize(
    ("subject", "args"),
    [
        _asking("queue_stats", "queues"),
        _asking("stats", "stats"),
        _asking("cache_invalidate", "cache", "invalidate"),
        _asking("prompts.list", "prompts", "list"),
        _asking("prompts.render", "prompts", "render", "site", "--var", "site=x"),
        _asking("generate", "generate", "hi", "--no-stream"),
        _asking("generate", "generate", "hi"),
        _asking("chat", "chat", "hi"),
        _asking("health", "status"),
        _asking("health", "status", "--watch"),
        _asking("models.list", "models", "list"),
        _asking("models.load", "models", "load", "qwen2.5:7b"),
        _asking("reason", "reason", "why?"),
        _asking("reason", "reason", "why?", "--no-stream"),
        _asking("reasoning.list", "chains"),
        _asking("reasoning.get", "chains", "c1"),
        _asking("construction.hoai", "construction", "hoai", "--costs", "1e5", "--zone", "I"),
        _asking("construction.safety", "construction", "safety", "--workers", "3"),
        _asking("construction.query", "construction", "query", "why?"),
        _asking("construction.quantities", "construction", "quantities", "--spec", "a wall"),
        _asking("construction.report", "construction", "report", "p", "--type", "safety"),
        _asking("construction.projects.list", "construction", "projects", "list"),
        _asking(
            "construction.document", "construction", "document", "pyproject.toml", "--type", "risk"
        ),
        _asking("construction.list", "construction", "list"),
        _asking("keys.list", "keys", "list"),
        _asking("keys.create", "keys", "create", "ci", "--rpm", "5"),
    ],
)
async def test_ctrl_c_ends_a_command_waiting_for_an_answer(
    nc: NATS, nats_server, prefix, subject: str, args: list[str]
) -> None:
    """A command waiting on an actor that never answers ends on SIGINT: 130, no traceback."""
    asked = asyncio.Event()

    async def hold(msg: Msg) -> None:
        asked.set()  # and never answer

    await nc.subscribe(_subject(Subjects(prefix), subject), cb=hold)
    await nc.flush()
    proc = await start(*args, "--nats", nats_server.url, "--prefix", prefix)
    async with asyncio.timeout(_STARTS_WITHIN_S):
        await asked.wait()
    await interrupt(proc)


class _Relay:
    """A TCP relay to the NATS server that can stop relaying: a server that hangs."""

    def __init__(self, url: str) -> None:
        target = urlsplit(url)
        self._target = (target.hostname or "127.0.0.1", target.port or 4222)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def __aenter__(self) -> _Relay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*self._target)
        self._writers += [client_w, server_w]
        for r, w in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(r, w))
            self._tasks.add(task)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            await self.flowing.wait()
            w.write(data)
            await w.drain()


async def test_ctrl_c_ends_a_command_whose_server_stopped_answering(
    nc: NATS, nats_server, prefix
) -> None:
    """A command ends on SIGINT though its NATS server no longer answers (no drain waits)."""
    asked = asyncio.Event()

    async def hold(msg: Msg) -> None:
        asked.set()

    await nc.subscribe(Subjects(prefix).queue_stats, cb=hold)
    await nc.flush()
    async with _Relay(nats_server.url) as relay:
        proc = await start("queues", "--nats", relay.url, "--prefix", prefix)
        async with asyncio.timeout(_STARTS_WITHIN_S):
            await asked.wait()
        relay.flowing.clear()  # from now on the server seems to hang
        await interrupt(proc)


async def test_ctrl_c_ends_a_long_streamed_answer(
    sim_factory, stack_factory, nc: NATS, nats_server, prefix
) -> None:
    """`generate` of a long answer from a slow host ends on SIGINT mid-stream, and cancels
    the request on its way out."""
    sim = await sim_factory(models=MODELS, tokens_per_second=20)
    await stack_factory([sim.url])
    cancelled = asyncio.Event()

    async def on_cancel(msg: Msg) -> None:
        cancelled.set()

    await nc.subscribe(Subjects(prefix).cancels, cb=on_cancel)
    await nc.flush()
    proc = await start(
        "generate", "the whole manual", "-m", "fast", "--num-predict", "5000",
        "--nats", nats_server.url, "--prefix", prefix,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(_STARTS_WITHIN_S):
        assert await proc.stdout.read(1), "generate ended by itself"
    await interrupt(proc)
    async with asyncio.timeout(_ENDS_WITHIN_S):
        await cancelled.wait()


async def test_ctrl_c_ends_chat_waiting_for_the_next_line(
    sim_factory, stack_factory, nats_server, prefix
) -> None:
    """Interactive `chat`, reading stdin for the next message, ends on SIGINT."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url])
    proc = await start(
        "chat", "-m", "fast", "--num-predict", "3", "--nats", nats_server.url, "--prefix", prefix,
        stdin=True,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"hello\n")
    await proc.stdin.drain()
    await lines_until(proc.stderr, lambda line: "tokens" in line)  # answered; reading again
    await interrupt(proc)


async def test_ctrl_c_ends_a_pull_in_progress(
    sim_factory, stack_factory, nc: NATS, nats_server, prefix
) -> None:
    """`models pull` of a big model over a slow link ends on SIGINT mid-download."""
    sim = await sim_factory(models=MODELS, pull_bytes_per_second=1e6)  # 4 GB: over an hour
    await stack_factory([sim.url], actors=("router", "executor", "health"))
    progressed = asyncio.Event()

    async def on_progress(msg: Msg) -> None:
        progressed.set()

    subject = Subjects(prefix).pull_progresses(canonical_model("mistral:7b"))
    await nc.subscribe(subject, cb=on_progress)
    await nc.flush()
    proc = await start(
        "models", "pull", "mistral:7b", "--nats", nats_server.url, "--prefix", prefix
    )
    async with asyncio.timeout(_STARTS_WITHIN_S):
        await progressed.wait()
    await interrupt(proc)


async def test_ctrl_c_ends_the_simulator_mid_answer() -> None:
    """`ollamesh sim` serving a slow answer ends on SIGINT without waiting for it."""
    proc = await start("sim", "--port", "0", "--tokens-per-second", "5")
    url = ""

    def listening(line: str) -> bool:
        nonlocal url
        if "simulator listening" in line:
            url = json.loads(line)["url"]
        return bool(url)

    await lines_until(proc.stderr, listening)
    body = {"model": "llama3.2:3b", "prompt": "a long one", "options": {"num_predict": 5000}}
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as http,
        http.stream("POST", "/api/generate", json=body) as resp,
    ):
        async for _ in resp.aiter_lines():
            break  # the answer has begun
        await interrupt(proc)


async def test_ctrl_c_ends_the_demo_and_cleans_up(tmp_path: Path) -> None:
    """`ollamesh demo` ends on SIGINT mid-tour, its Postgres stopped and its files removed."""
    proc = await start("demo", "--tokens-per-second", "5", env={"TMPDIR": str(tmp_path)})
    await lines_until(proc.stdout, lambda line: line.startswith("1. A streamed chat answer"))
    await interrupt(proc)
    assert not _demo_dirs(tmp_path)


def _demo_dirs(tmp: Path) -> list[Path]:
    """The demo's scratch directories (its Postgres data) still in `tmp`."""
    return list(tmp.glob("ollamesh-demo-*"))


REASONING = ("router", "executor", "prompts", "reasoning")
WINDOWS = "How many windows are in a 5-story building with 4 windows per floor?"


async def test_reason_draws_the_steps_then_prints_the_answer(
    database_url, sim_factory, stack_factory, nats_server, prefix
) -> None:
    """`ollamesh reason QUERY` (not on a terminal): a line per step change on stderr, the
    answer on stdout, the chain's figures last; `chains` lists it, `chains ID` shows it."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=REASONING, database={"url": database_url})
    bus = ("--nats", nats_server.url, "--prefix", prefix)
    code, out, err = await run("reason", WINDOWS, "--max-steps", "3", "--num-predict", "8", *bus)
    assert code == 0, err
    lines = err.splitlines()
    started = [line for line in lines if line.startswith("step ") and " started" in line]
    finished = [line for line in lines if line.startswith("step ") and " done (" in line]
    assert len(started) == len(finished) >= 1 and sim.url in finished[0]
    assert len(out.split()) == 8
    figures = lines[-1]
    assert figures.startswith("[chain ") and f"{len(finished)} steps" in figures
    chain_id = figures.removeprefix("[chain ").split(":", 1)[0]
    code, listed, err = await run("chains", *bus)
    assert code == 0 and chain_id in listed and "done" in listed, err
    code, shown, err = await run("chains", chain_id, *bus)
    assert code == 0, err
    assert f"chain {chain_id} (done): {WINDOWS}" in shown and out.strip() in shown


async def test_reason_with_a_bad_request_says_why_in_one_line(nats_server, prefix) -> None:
    """`--max-steps 40` is refused before anything is sent: one line, exit 1."""
    code, _, err = await run(
        "reason", "why?", "--max-steps", "40", "--nats", nats_server.url, "--prefix", prefix
    )
    assert code == 1 and err.startswith("error: bad_request:") and "max_steps" in err
    assert "Traceback" not in err


async def test_ctrl_c_mid_chain_cancels_the_chain(
    database_url, sim_factory, stack_factory, nats_server, prefix
) -> None:
    """SIGINT while the chain's steps generate: exit 130 at once, and the chain is stopped
    on the fleet (stored as cancelled, nothing left generating)."""
    sim = await sim_factory(models=MODELS, tokens_per_second=20)
    await stack_factory([sim.url], actors=REASONING, database={"url": database_url})
    proc = await start(
        "reason", WINDOWS, "--num-predict", "5000", "--nats", nats_server.url, "--prefix", prefix
    )
    await lines_until(proc.stderr, lambda line: line.startswith("step ") and "started" in line)
    await interrupt(proc)
    await sim.engine.wait_for(lambda s: s.in_flight == 0, timeout=10)
    async with Client(nats_server.url, prefix=prefix, timeout=30.0) as client:
        (chain,) = await client.list_chains()
        await eventually(lambda: _state_is(client, chain.chain_id, "cancelled"), timeout=10)


async def _state_is(client: Client, chain_id: str, state: str) -> bool:
    return (await client.get_chain(chain_id)).state.value == state


async def test_construction_hoai_prints_the_fee_then_get_and_list_find_it(
    database_url, sim_factory, stack_factory, nats_server, prefix
) -> None:
    """`ollamesh construction hoai` prints the fee line by line with its paragraphs and
    the analysis' id; `construction get ID` shows it again (from the store), `list` lists
    it; a bad `--points` is one line and exit 1."""
    sim = await sim_factory(models=MODELS)
    actors = ("router", "executor", "prompts", "construction")
    await stack_factory([sim.url], actors=actors, database={"url": database_url})
    bus = ("--nats", nats_server.url, "--prefix", prefix)
    code, out, err = await run(
        "construction", "hoai", "--costs", "400000", "--zone", "III", "--phases", "1-4",
        "--conversion", "--incidentals", "5", "--no-analysis", *bus,
    )  # fmt: skip
    assert code == 0, err
    assert "51,440.50" in out and "13,888.94" in out and "20,825.08" in out
    assert "§ 34 Abs. 3" in out and "§ 36, § 6 Abs. 2" in out
    match = re.search(r"\[analysis (\w+): ", out)
    assert match is not None, out
    code, shown, err = await run("construction", "get", match[1], *bus)
    assert code == 0 and "from the store" in shown and "20,825.08" in shown, err
    code, listed, err = await run("construction", "list", *bus)
    assert code == 0 and match[1] in listed, err
    code, _, err = await run("construction", "hoai", "--costs", "1e5", "--points", "7,1", *bus)
    assert code == 1 and err.startswith("error: bad_request:") and "Traceback" not in err
    code, _, err = await run("construction", "hoai", "--costs", "1e5", "--points", "4,x", *bus)
    assert code == 1 and "--points" in err and "Traceback" not in err
    sim.engine.scripts.add(Script(match="Perform safety", text="RISKS:\n- Falls (high)\n"))
    code, out, err = await run(
        "construction", "safety", "--workers", "12", "--equipment", "crane,scaffold", *bus
    )
    assert code == 0 and "Falls (high)" in out and "high" in out and "ignored the" in out
    sim.engine.scripts.add(Script(match="How long", text='{"type": "schedule"}', count=1))
    sim.engine.scripts.add(Script(match="How long", text="About 3 Wochen, until KW 12/2025."))
    code, out, err = await run(
        "construction", "query", "How long?", "--phase", "8", "--fact", "storeys=5", *bus
    )
    assert code == 0 and "schedule; confidence" in out, err
    assert "figure: 3 Wochen = 3 weeks" in out and "date: KW 12/2025 = 2025-03-17" in out
    code, _, err = await run("construction", "query", "x", "--fact", "storeys", *bus)
    assert code == 1 and "NAME=VALUE" in err
    code, out, err = await run(
        "construction", "quantities", "--element", "slab,concrete,6,4,0.25", *bus
    )
    assert code == 0 and "computed: slab: 6 m x 4 m x 0.25 m = 6 m3" in out, err
    code, _, err = await run("construction", "quantities", "--element", "slab,concrete,x", *bus)
    assert code == 1 and "no number" in err


async def test_construction_projects_and_a_report_written_to_a_file(
    database_url, sim_factory, stack_factory, nats_server, prefix, tmp_path: Path
) -> None:
    """`construction projects put FILE`, `projects get`, then `construction report ID
    --type financial -o report.md` writes the Markdown; a broken file is one line."""
    sim = await sim_factory(models=MODELS)
    actors = ("router", "executor", "prompts", "construction")
    await stack_factory([sim.url], actors=actors, database={"url": database_url})
    bus = ("--nats", nats_server.url, "--prefix", prefix)
    project = tmp_path / "school.json"
    project.write_text(json.dumps({"project_id": "school-7", "name": "School extension",
                                   "budget_eur": 2e6, "costs_to_date_eur": 9e5}))  # fmt: skip
    code, out, err = await run("construction", "projects", "put", str(project), *bus)
    assert code == 0 and "project school-7 stored" in out, err
    code, out, err = await run("construction", "projects", "get", "school-7", *bus)
    assert code == 0 and json.loads(out)["budget_eur"] == 2e6, err
    report = tmp_path / "report.md"
    code, out, err = await run(
        "construction", "report", "school-7", "--type", "financial", "-o", str(report), *bus
    )
    assert code == 0 and "written to" in out, err
    assert report.read_text().startswith("# Financial report: School extension")
    assert "| Budget used | 45 % |" in report.read_text()
    spec = tmp_path / "spec.pdf"
    spec.write_bytes(pdf([["The shell is due 12.03.2025."]]))
    code, out, err = await run("construction", "document", str(spec), "--type", "schedule", *bus)
    assert code == 0 and "schedule analysis of a pdf document: 1 pages" in out, err
    code, _, err = await run("construction", "document", "/no/such.pdf", "--type", "risk", *bus)
    assert code == 1 and "cannot read it" in err
    project.write_text("{not json")
    code, _, err = await run("construction", "projects", "put", str(project), *bus)
    assert code == 1 and "not a readable JSON project" in err and "Traceback" not in err
