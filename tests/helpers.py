"""Small helpers the integration tests share."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import os
import signal
import sys
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from bus.subjects import Subjects
from schemas import Chunk, Done, Error, StreamMessage, decode_stream
from schemas.reasoning import Step


async def stored_stream(
    nc: NATS, subjects: Subjects, request_id: str, *, timeout: float = 5.0
) -> list[StreamMessage]:
    """Every message JetStream stored for a request's stream, up to its terminal one."""
    sub = await nc.jetstream().subscribe(
        subjects.stream(request_id),
        stream=subjects.chunk_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    out: list[StreamMessage] = []
    try:
        async with asyncio.timeout(timeout):
            while not out or isinstance(out[-1], Chunk | Step):
                out.append(decode_stream((await sub.next_msg(timeout=timeout)).data))
        # Anything stored after the terminal message would be a second ending.
        try:
            extra = await sub.next_msg(timeout=0.2)
        except nats.errors.TimeoutError:
            pass
        else:
            out.append(decode_stream(extra.data))
    finally:
        await sub.unsubscribe()
    return out


def assert_well_formed(messages: list[StreamMessage]) -> None:
    """Chunks (and a chain's steps) numbered 1, 2, 3, ... then exactly one `done` or
    `error`, and nothing after."""
    *chunks, last = messages
    assert all(isinstance(c, Chunk | Step) for c in chunks), messages
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))  # type: ignore[union-attr]
    assert isinstance(last, Done | Error), last
    assert last.seq == len(chunks) + 1


async def warm(url: str, *models: str) -> None:
    """Load `models` on an Ollama host the way Ollama documents: an empty generate."""
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        for model in models:
            resp = await http.post("/api/generate", json={"model": model, "keep_alive": "1h"})
            resp.raise_for_status()


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    """Ask `check` (a function or a coroutine function) again until it holds (the state it
    reads changes on its own, with no event to wait on); fail after `timeout`."""

    async def holds() -> bool:
        result = check()
        return await result if inspect.isawaitable(result) else result

    async with asyncio.timeout(timeout):
        while not await holds():  # noqa: ASYNC110 - no event exists for what `check` reads
            await asyncio.sleep(0.05)


def up_env(
    nats_url: str, *hosts: str, prefix: str | None = None, **settings: str
) -> dict[str, str]:
    """The environment of an `ollamesh up` child: this one, plus where NATS and the hosts
    are, the prefix, and any other setting (`OLLAMESH_CONFIG=...`, `XDG_DATA_HOME=...`)."""
    env = {**os.environ, "NATS_URL": nats_url, "OLLAMA_HOSTS": ",".join(hosts), **settings}
    if prefix is not None:
        env["OLLAMESH_PREFIX"] = prefix
    return env


async def ollamesh_up(env: dict[str, str], *args: str, timeout: float = 30.0) -> Process:
    """Start `ollamesh up ARGS` with JSON logs on stderr; return once it has started.

    The caller stops it (SIGTERM) and reads the rest of stderr.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "actors", "up", "--log-format", "json", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    async with asyncio.timeout(timeout):
        while b"stack_started" not in (line := await proc.stderr.readline()):
            if not line:
                raise AssertionError(f"ollamesh up exited with {await proc.wait()}")
    return proc


async def executor_process(
    nats_url: str, host: str, prefix: str, tmp_path: Path, inflight: int
) -> Process:
    """An `ollamesh up --actors executor` child serving `host`, `inflight` requests at a
    time (for a test to SIGKILL)."""
    config = tmp_path / "executor.toml"
    config.write_text(f"[executor]\nmax_inflight_per_model = {inflight}\n[metrics]\nport = 0\n")
    env = up_env(nats_url, host, prefix=prefix, OLLAMESH_CONFIG=str(config))
    return await ollamesh_up(env, "--actors", "executor")


class Running:
    """An `ollamesh up` child whose log is read all along: its pipe never fills, the
    events it logged are counted, and its last lines are kept for a failure's message."""

    def __init__(self, proc: Process, tail: int = 200) -> None:
        self.proc = proc
        self.events: collections.Counter[str] = collections.Counter()
        self.tail: collections.deque[str] = collections.deque(maxlen=tail)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.tail.append(text)
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                self.events[json.loads(text).get("event", "")] += 1

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM it (SIGKILL after `timeout`); return its exit code once its log is read."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
        code = await self.proc.wait()
        await asyncio.wait_for(self._reader, timeout)
        return code


@contextlib.asynccontextmanager
async def ollamesh_running(env: dict[str, str], *args: str) -> AsyncIterator[Running]:
    """`ollamesh up ARGS` for the block (see `ollamesh_up`), stopped after it."""
    running = Running(await ollamesh_up(env, *args))
    try:
        yield running
    finally:
        await running.stop()


async def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run one statement on the database at `url`; return its rows."""
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def own_database(server_url: str, name: str) -> AsyncIterator[None]:
    """A database `name` on the server at `server_url`, dropped afterwards."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def refuse_connections(server_url: str, name: str, refuse: bool) -> None:
    """Have Postgres refuse (and drop) every connection to database `name`, or take them
    again: an outage of one test's database, the server staying up for the others."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {not refuse}')
        if refuse:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
    finally:
        await admin.close()
