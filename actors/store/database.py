"""Postgres for ollamesh: an asyncpg pool, numbered migrations, an embedded server.

Migrations are the files `migrations/NNNN_name.sql`, applied in order, each in its own
transaction and recorded in `schema_migrations`; an advisory lock keeps two processes
starting at once from applying the same file twice. A second start changes nothing.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import re
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


class EmbeddedPostgres:
    """A Postgres server from the `pgserver` wheel, in `data_dir`, for as long as needed.

    The server is shared by every process using the same directory and stops when the
    last of them lets go (pgserver's own bookkeeping).
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    async def start(self) -> str:
        """Start (or join) the server; return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._server = await asyncio.to_thread(self._get_server)
        except Exception as exc:  # pgserver raises plain exceptions with the log inside
            raise StoreError(
                f"cannot start the embedded Postgres in {self.data_dir}: {exc}"
            ) from exc
        log.info("postgres_started", data_dir=str(self.data_dir))
        return self.url()

    def url(self, database: str | None = None) -> str:
        """The running server's URL, for `database` (default: `postgres`)."""
        if self._server is None:
            raise StoreError("the embedded Postgres is not running")
        url: str = self._server.get_uri(database)
        return url

    def _get_server(self) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs on a machine without XDG_RUNTIME_DIR
            import pgserver

            return pgserver.get_server(self.data_dir, cleanup_mode="stop")

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.cleanup)

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
