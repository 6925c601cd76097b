"""Postgres for ollamesh: an asyncpg pool, numbered migrations, an embedded server.

Migrations are the files `migrations/NNNN_name.sql`, applied in order, each in its own
transaction and recorded in `schema_migrations`; an advisory lock keeps two processes
starting at once from applying the same file twice. A second start changes nothing.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.resources
import os
import re
import threading
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import structlog

from bus.errors import Unavailable

__all__ = ["EmbeddedPostgres", "StoreError", "migrate", "open_pool"]

log = structlog.get_logger("actors.store")

_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any number, the same in every ollamesh process: "ollamesh migrations" as a lock key.
_LOCK_KEY = 0x011A_3E54


class StoreError(Unavailable):
    """Postgres could not be reached, started or brought to the current schema."""


def migrations() -> list[tuple[int, str, str]]:
    """The packaged migrations, in order: (version, name, sql)."""
    found = []
    for entry in importlib.resources.files("actors.store.migrations").iterdir():
        if match := _MIGRATION.match(entry.name):
            found.append((int(match[1]), match[2], entry.read_text()))
    return sorted(found)


async def migrate(pool: asyncpg.Pool) -> list[int]:
    """Apply the migrations not applied yet; return their versions."""
    applied: list[int] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version,
                        name,
                    )
                log.info("migration_applied", version=version, name=name)
                applied.append(version)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied


async def open_pool(
    url: str, *, min_size: int = 1, max_size: int = 10, timeout: float = 10.0
) -> asyncpg.Pool:
    """Connect a pool to `url` and bring the schema up to date."""
    try:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, timeout=timeout, command_timeout=30.0
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise StoreError(f"cannot connect to Postgres: {exc}") from exc
    try:
        await migrate(pool)
    except asyncpg.PostgresError as exc:
        await pool.close()
        raise StoreError(f"cannot apply the migrations: {exc}") from exc
    return pool


class _Held:
    """This process's use of one data directory's server."""

    def __init__(self, pgdata: Path, server: Any, *, started: bool, stops: bool) -> None:
        self.pgdata = pgdata
        self.server = server
        self.started = started  # this process started it (rather than joined it)
        self.stops = stops  # and may stop it, as the last of its users to let go
        self.users = 0


# pgserver hands every caller in a process the same server object and lists the process
# once among the server's users, so its first `cleanup()` would stop the server under
# every other user in this process (a test's Stack on the session's Postgres): count here.
_held: dict[Path, _Held] = {}
_held_lock = threading.Lock()


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the live server on `pgdata` (its `postmaster.pid`; -1: being written)."""
    from pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):  # a file being written: it is starting
        return -1
    return info.pid if info is not None and info.is_running() else None


def _acquire(pgdata: Path) -> _Held:
    """Start or join the server on `pgdata`; remember how, for `_release`."""
    import pgserver
    from pgserver.utils import DiskList

    with _held_lock:
        held = _held.get(pgdata)
        if held is None:
            before = _postmaster_pid(pgdata)
            users = DiskList(pgdata / ".handle_pids.json").get() if before else []
            server = pgserver.get_server(pgdata, cleanup_mode="stop")
            # Not "was one running before": it may have been on its way down meanwhile.
            started = before is None or server.get_pid() != before
            # A server running before that no process of pgserver's holds was started by
            # other means (by hand, or meant to outlive its starter): never ours to stop.
            stops = started or bool(users)
            if stops:
                # Now too, not only in `_release`: pgserver's own clean-up at exit counts.
                _forget_dead_users(server)
            else:
                server.cleanup_mode = None  # nor may pgserver's own clean-up at exit
            held = _held[pgdata] = _Held(pgdata, server, started=started, stops=stops)
        held.users += 1
        return held


def _release(held: _Held) -> None:
    """Let go of the server; stop it if no other process uses it (and it may)."""
    import pgserver

    with _held_lock:
        held.users -= 1
        if held.users:
            return
        del _held[held.pgdata]
        server = held.server
        if held.stops:
            _forget_dead_users(server)
        # pgserver stops it (unless told not to) when this process is the last on its list.
        server.cleanup()
        atexit.unregister(server._cleanup)
        # A later start in this process must build a new handle, not get this spent one.
        pgserver.PostgresServer._instances.pop(held.pgdata, None)


def _forget_dead_users(server: Any) -> None:
    """Drop from pgserver's list of users the processes that ended without letting go.

    A process killed outright (SIGKILL, OOM, a container stopped by force) stays on the
    list for good, and pgserver then never stops the server: not even a later process
    that started it afresh.
    """
    import pgserver
    from pgserver.utils import process_is_running

    with pgserver.PostgresServer._lock:
        users = server.global_process_id_list
        try:
            pids = users.get()
            alive = [pid for pid in pids if pid == os.getpid() or process_is_running(pid)]
            if alive != pids:
                users.put(alive)
        except (OSError, ValueError) as exc:  # the list unreadable: leave it to pgserver
            log.warning("postgres_users_unreadable", error=repr(exc))
            return
    if alive != pids:
        log.info("postgres_stale_users_dropped", pids=sorted(set(pids) - set(alive)))


class EmbeddedPostgres:
    """A Postgres server from the `pgserver` wheel, in `data_dir`, for as long as needed.

    The server is shared by every process using the same directory and stopped by the
    last of them to let go, whoever started it (pgserver's bookkeeping, with two holes
    closed: a process that died without letting go no longer counts, and handles in one
    process count as one). So a process that joined a server another one uses (another
    ollamesh, a test session) leaves it running; a server running before that nobody
    holds through pgserver (started by hand, or meant to outlive its starter) is never
    stopped.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._held: _Held | None = None

    @property
    def started(self) -> bool:
        """Whether this process started the server (rather than joined a running one)."""
        return self._held is not None and self._held.started

    async def start(self) -> str:
        """Start (or join) the server; return its URL."""
        if self._held is None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._held = await asyncio.to_thread(self._acquire)
            except Exception as exc:  # pgserver raises plain exceptions with the log inside
                raise StoreError(
                    f"cannot start the embedded Postgres in {self.data_dir}: {exc}"
                ) from exc
            log.info("postgres_started", data_dir=str(self.data_dir), joined=not self.started)
        return self.url()

    def url(self, database: str | None = None) -> str:
        """The running server's URL, for `database` (default: `postgres`)."""
        if self._held is None:
            raise StoreError("the embedded Postgres is not running")
        url: str = self._held.server.get_uri(database)
        return url

    def _acquire(self) -> _Held:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs on a machine without XDG_RUNTIME_DIR
            return _acquire(self.data_dir.expanduser().resolve())

    async def stop(self) -> None:
        """Let go of the server: stopped if this process is the last to use it."""
        if self._held is not None:
            held, self._held = self._held, None
            await asyncio.to_thread(_release, held)

    async def __aenter__(self) -> EmbeddedPostgres:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
