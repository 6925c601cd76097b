"""Fixtures: a real nats-server for the session, a fresh subject prefix per test, stacks."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from actors.runtime.supervisor import Stack
from actors.store import EmbeddedPostgres
from bus.client import Client
from bus.config import Config
from bus.connection import NATS, connect
from bus.server import EmbeddedNats
from tests.helpers import own_database

pytest_plugins = ["tests._sim_fixtures", "tests._engine_fixtures", "tests._cluster_fixtures"]

StackFactory = Callable[..., Awaitable[Stack]]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_server() -> AsyncIterator[EmbeddedNats]:
    """One real nats-server with JetStream for the whole session."""
    async with EmbeddedNats() as server:
        yield server


@pytest.fixture(scope="session")
def replicas() -> int:
    """Copies of each stream and bucket the tests' stacks provision: one on the session's
    single server (tests/chaos/ puts a three-node cluster in its place, and 3 here)."""
    return 1


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedPostgres]:
    """One real Postgres (from the `pgserver` wheel) for the whole session."""
    async with EmbeddedPostgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def database_url(postgres: EmbeddedPostgres, prefix: str) -> AsyncIterator[str]:
    """A database of this test's own on the session's Postgres."""
    async with own_database(postgres.url(), prefix):
        yield postgres.url(prefix)


@pytest.fixture
def prefix() -> str:
    """A subject prefix of this test's own, so tests never see each other's messages."""
    return f"t{secrets.token_hex(4)}"


@pytest_asyncio.fixture(loop_scope="session")
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    conn = await connect(nats_server.url, name="test")
    yield conn
    await conn.drain()


def make_config(url: str, prefix: str, hosts: list[str], **sections: Any) -> Config:
    """A Config for a test: its prefix, its hosts, fast timeouts, and any overrides."""
    raw: dict[str, Any] = {
        "prefix": prefix,
        "ollama_hosts": hosts,
        "roles": {"primary": "qwen2.5:7b", "fast": "llama3.2:3b", "backup": "llama3.2:3b"},
        "nats": {"url": url},
        "executor": {"retry_backoff_ms": 20, "retry_backoff_max_ms": 200, "tags_refresh_s": 1.0},
        # JetStream reserves a bucket's whole bound: hundreds of tests share one server.
        "cache": {"max_bytes": 1024 * 1024},
        "metrics": {"port": 0, "host": "127.0.0.1"},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **values}
        else:
            raw[name] = values
    return msgspec.convert(raw, Config)


@pytest_asyncio.fixture(loop_scope="session")
async def stack_factory(
    nats_server: EmbeddedNats, prefix: str, replicas: int
) -> AsyncIterator[StackFactory]:
    """Start router + executor stacks against the session's server; stop them after.

    A stack with a recorder needs `database={"url": database_url}` from the test, which
    names `database_url` before `stack_factory` so the database outlives the stacks.
    """
    stacks: list[Stack] = []

    async def make(
        hosts: list[str], actors: tuple[str, ...] = ("router", "executor"), **sections: Any
    ) -> Stack:
        sections["nats"] = {"replicas": replicas, **sections.get("nats", {})}
        stack = Stack(make_config(nats_server.url, prefix, hosts, **sections), actors=actors)
        await stack.start()
        stacks.append(stack)
        return stack

    yield make
    for stack in reversed(stacks):
        await stack.stop(grace=2.0)


@pytest_asyncio.fixture(loop_scope="session")
async def client(nats_server: EmbeddedNats, prefix: str) -> AsyncIterator[Client]:
    """An SDK client on this test's prefix."""
    async with Client(nats_server.url, prefix=prefix, timeout=30.0) as c:
        yield c


@pytest_asyncio.fixture(loop_scope="session")
async def kv(nc: NATS, prefix: str) -> AsyncIterator[KeyValue]:
    """A limits bucket of this test's own."""
    js = nc.jetstream()
    bucket = f"{prefix}_limits"
    yield await js.create_key_value(
        KeyValueConfig(bucket=bucket, history=1, storage=StorageType.MEMORY)
    )
    await js.delete_key_value(bucket)
