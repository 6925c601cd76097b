"""A real three-node NATS cluster from deploy/nats/cluster.conf, for any test."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import nats.errors
import pytest_asyncio
from nats.js.errors import APIError

from actors.cli.bench.harness import free_port
from bus.connection import connect
from bus.server import EmbeddedNats
from tests.helpers import eventually

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nats"
NODES = 3


def with_local_user(into: Path) -> Path:
    """deploy/nats/cluster.conf with nats.conf's authorization (deploy/nats/local.conf,
    written into `into` with the files they include): the roles' users and `local` with
    every right, for the tests' connections without credentials. A production node has
    no such user (tests/test_permissions.py starts cluster.conf as it is)."""
    for conf in DEPLOY.glob("*.conf"):
        shutil.copy(conf, into)
    config = into / "test-cluster.conf"
    # The later authorization block replaces auth.conf's.
    config.write_text('include "cluster.conf"\ninclude "local.conf"\n')
    return config


@contextlib.asynccontextmanager
async def running_cluster(
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[list[EmbeddedNats]]:
    """Three nodes on loopback (named n1, n2, n3), routed to each other, JetStream ready,
    each listening for leaf nodes too (`leaf_port`); `env` adds to their environment."""
    routes = [free_port() for _ in range(NODES)]
    common = {f"NATS_ROUTE_{i + 1}": f"nats-route://127.0.0.1:{p}" for i, p in enumerate(routes)}
    common |= {"NATS_LEAF_LISTEN": "127.0.0.1:-1", **(env or {})}
    configs = tempfile.TemporaryDirectory(prefix="ollamesh-cluster-")
    config = with_local_user(Path(configs.name))
    nodes = [
        EmbeddedNats(
            config_file=config,
            env=common | {"NATS_SERVER_NAME": f"n{i + 1}", "NATS_CLUSTER_LISTEN": f"127.0.0.1:{p}"},
        )
        for i, p in enumerate(routes)
    ]
    try:
        await asyncio.gather(*(node.start() for node in nodes))
        # Every node, as NATS_URL names a cluster's.
        nc = await connect(",".join(node.url for node in nodes), name="cluster-probe")
        try:
            js = nc.jetstream()

            async def ready() -> bool:
                try:
                    await js.account_info()
                except (APIError, nats.errors.Error):
                    return False  # no meta leader elected yet
                return True

            await eventually(ready, timeout=20.0)
        finally:
            await nc.close()
        yield nodes
    finally:
        for node in nodes:
            await node.stop()
        configs.cleanup()


class NodeByNode:
    """A running cluster in the place of the session's single server (`nats_server`):
    each read of `url` names the next node, so a test's stacks, clients and probes sit
    on different nodes and every request crosses the cluster's routes."""

    def __init__(self, nodes: list[EmbeddedNats]) -> None:
        self.nodes = nodes
        self._turns = itertools.cycle(nodes)

    @property
    def url(self) -> str:
        return next(self._turns).url


@pytest_asyncio.fixture(loop_scope="session")
async def cluster() -> AsyncIterator[list[EmbeddedNats]]:
    """A three-node cluster of this test's own (it may kill a node)."""
    async with running_cluster() as nodes:
        yield nodes


def config_limits(path: Path, *, nested: bool = True) -> dict[str, str]:
    """A nats-server config's connection limits (`max_*`, `write_deadline`,
    `ping_interval`); `nested=False`: top-level ones only (not JetStream's)."""
    start = r"^\s*" if nested else r"^"
    pattern = start + r"(max_\w+|write_deadline|ping_interval):\s*(\S+)"
    return dict(re.findall(pattern, path.read_text(), re.M))
