"""The embedded Postgres: stopped by the last process using it, never under one that still is."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from asyncio.subprocess import Process
from pathlib import Path

import asyncpg
import pytest

from actors.store import EmbeddedPostgres
from bus.server import EmbeddedNats
from tests.helpers import query


def _config(tmp_path: Path, nats_url: str, prefix: str, data_dir: Path | None = None) -> Path:
    """A config for `ollamesh up --actors prompts`: the session's server, no metrics port."""
    lines = [f'prefix = "{prefix}"', "[nats]", f'url = "{nats_url}"', "[metrics]", "port = 0"]
    if data_dir is not None:
        lines += ["[database]", f'data_dir = "{data_dir}"']
    path = tmp_path / "ollamesh.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _up(env: dict[str, str]) -> Process:
    """Start `ollamesh up --actors prompts`; return once it has started."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "actors", "up", "--actors", "prompts", "--log-format", "json",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while b"stack_started" not in (line := await proc.stderr.readline()):
                seen.append(line)
                assert line, b"".join(seen).decode()  # it ended before it started
    except BaseException:
        await _kill(proc)
        raise
    return proc


async def _sigterm(proc: Process) -> None:
    """SIGTERM `proc`; it exits 0."""
    assert proc.stderr is not None
    proc.send_signal(signal.SIGTERM)
    rest = await asyncio.wait_for(proc.stderr.read(), 30)
    assert await proc.wait() == 0, rest.decode()


async def _kill(proc: Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def _up_and_sigterm(env: dict[str, str]) -> None:
    """Run `ollamesh up --actors prompts` until it has started, then SIGTERM it."""
    proc = await _up(env)
    try:
        await _sigterm(proc)
    finally:
        await _kill(proc)


async def _pgserver(pgdata: Path, cleanup_mode: str | None) -> None:
    """In a process of its own, start or join pgserver's server on `pgdata`, then exit."""
    code = (
        "import sys, pgserver; pgserver.get_server(sys.argv[1], cleanup_mode=sys.argv[2] or None)"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "ignore", "-c", code, str(pgdata), cleanup_mode or ""
    )
    assert await asyncio.wait_for(proc.wait(), 60) == 0


def _env(tmp_path: Path, config: Path) -> dict[str, str]:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "OLLAMESH_CONFIG": str(config)}
    env.pop("DATABASE_URL", None)
    return env


async def _dead_pid() -> int:
    """The pid of a process that has ended (as one killed before it could let go)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await proc.wait()
    return proc.pid


async def _serves(url: str) -> bool:
    """Whether the server at `url` answers a query."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return bool(await conn.fetchval("SELECT 1") == 1)
    finally:
        await conn.close()


async def test_up_stops_the_postgres_it_started(
    nats_server: EmbeddedNats, prefix: str, tmp_path: Path
) -> None:
    """`ollamesh up` on a fresh data directory stops its Postgres when SIGTERM ends it."""
    env = _env(tmp_path, _config(tmp_path, nats_server.url, prefix))
    await _up_and_sigterm(env)
    pgdata = tmp_path / "ollamesh" / "postgres"
    assert (pgdata / "PG_VERSION").exists()  # it did start one there
    assert not (pgdata / "postmaster.pid").exists()


async def test_up_stops_it_though_a_killed_process_is_still_listed(
    nats_server: EmbeddedNats, prefix: str, tmp_path: Path
) -> None:
    """A process killed outright stays on pgserver's list of users; the next `up` that
    starts the server still stops it."""
    env = _env(tmp_path, _config(tmp_path, nats_server.url, prefix))
    await _up_and_sigterm(env)
    users = tmp_path / "ollamesh" / "postgres" / ".handle_pids.json"
    users.write_text(json.dumps([await _dead_pid()]))
    await _up_and_sigterm(env)
    assert not (users.parent / "postmaster.pid").exists()


async def test_up_leaves_a_postgres_it_joined_running(
    nats_server: EmbeddedNats, prefix: str, tmp_path: Path
) -> None:
    """`ollamesh up` on a directory whose server another process started leaves it serving."""
    async with EmbeddedPostgres(tmp_path / "pg") as server:
        config = _config(tmp_path, nats_server.url, prefix, data_dir=server.data_dir)
        await _up_and_sigterm(_env(tmp_path, config))
        assert await _serves(server.url())
    assert not (server.data_dir / "postmaster.pid").exists()


async def test_the_last_process_on_a_server_stops_it_whoever_started_it(
    nats_server: EmbeddedNats, prefix: str, tmp_path: Path
) -> None:
    """The process that started the server lets go first: it keeps serving the one that
    joined, which stops it when it ends."""
    server = EmbeddedPostgres(tmp_path / "pg")
    url = await server.start()
    config = _config(tmp_path, nats_server.url, prefix, data_dir=server.data_dir)
    proc = await _up(_env(tmp_path, config))
    try:
        await server.stop()
        assert await _serves(url)
        await _sigterm(proc)
    finally:
        await _kill(proc)
    assert not (server.data_dir / "postmaster.pid").exists()


async def test_up_never_stops_a_server_nobody_holds(
    nats_server: EmbeddedNats, prefix: str, tmp_path: Path
) -> None:
    """A server running before that no process holds (started by hand, meant to outlive
    its starter) is left running by `ollamesh up`."""
    pgdata = tmp_path / "pg"
    await _pgserver(pgdata, cleanup_mode=None)  # starts it, and leaves it running
    try:
        config = _config(tmp_path, nats_server.url, prefix, data_dir=pgdata)
        await _up_and_sigterm(_env(tmp_path, config))
        assert (pgdata / "postmaster.pid").exists()
    finally:
        await _pgserver(pgdata, cleanup_mode="stop")  # joins it, and is the last to go
    assert not (pgdata / "postmaster.pid").exists()


async def test_a_second_handle_in_one_process_leaves_the_first_serving(
    postgres: EmbeddedPostgres,
) -> None:
    """Joining the session's Postgres from the same process and letting go stops nothing."""
    async with EmbeddedPostgres(postgres.data_dir) as joined:
        assert await _serves(joined.url())
    assert await _serves(postgres.url())


async def test_stopped_and_started_again_it_serves_its_data_at_the_same_url(
    tmp_path: Path,
) -> None:
    """Stopped, its server is gone (no postmaster, nothing to connect to); started again
    on the same data directory, it answers at the URL it had, with what it held (what
    tests/chaos/test_postgres.py does to Postgres under load)."""
    server = EmbeddedPostgres(tmp_path / "pg")
    url = await server.start()
    try:
        await query(url, "CREATE TABLE kept AS SELECT 1 AS n")
        await server.stop()
        assert not (server.data_dir / "postmaster.pid").exists()
        with pytest.raises(OSError):
            await asyncpg.connect(url, timeout=5)
        assert await server.start() == url
        assert [r["n"] for r in await query(url, "SELECT n FROM kept")] == [1]
    finally:
        await server.stop()
