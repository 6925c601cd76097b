"""A real three-node NATS cluster from deploy/nats/cluster.conf, with `[nats] replicas =
3`: what ollamesh provisions is kept on every node, and a node SIGKILLed while work
waits loses none of it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from actors.runtime.supervisor import Stack
from bus.client import Client
from bus.connection import connect
from bus.provision import provision
from bus.server import EmbeddedNats, packaged_config
from bus.subjects import Subjects
from schemas import GenerateResult
from tests._cluster_fixtures import DEPLOY, NODES
from tests.conftest import make_config

REQUESTS = 12


def test_the_cluster_config_has_the_single_nodes_limits() -> None:
    """deploy/nats/cluster.conf sets what nats.conf sets (the payload ollamesh's typed
    `payload_too_large` is computed against, the slow-consumer room)."""

    def limits(path: Path) -> dict[str, str]:
        found = re.findall(
            r"^\s*(max_\w+|write_deadline|ping_interval):\s*(\S+)", path.read_text(), re.M
        )
        return dict(found)

    single = limits(packaged_config())
    assert single and limits(DEPLOY / "cluster.conf") == single


async def test_the_work_stream_s_leader_dying_under_load_loses_no_work(
    cluster: list[EmbeddedNats], sim_factory, prefix: str
) -> None:
    """Work queued on three nodes: its stream's leader SIGKILLed while one request runs
    and the rest wait; every request is served, none lost."""
    config = make_config(cluster[0].url, prefix, [], nats={"replicas": 3})
    probe = await connect(cluster[0].url, name="cluster-probe")
    try:
        await provision(probe.jetstream(), Subjects(prefix), config)
        info = await probe.jetstream().stream_info(Subjects(prefix).work_stream)
    finally:
        await probe.close()
    assert info.config.num_replicas == 3
    assert info.cluster is not None and len(info.cluster.replicas or []) == NODES - 1
    leader = next(n for i, n in enumerate(cluster) if info.cluster.leader == f"n{i + 1}")
    # The fleet and its client on another node: the leader's death is the stream's alone.
    url = next(n for n in cluster if n is not leader).url
    sim = await sim_factory(models=["llama3.2:3b"], tokens_per_second=20)
    stack = Stack(
        make_config(url, prefix, [sim.url], nats={"replicas": 3},
                    executor={"max_inflight_per_model": 1}),
        actors=("router", "executor"),
    )  # fmt: skip
    await stack.start()
    try:
        async with Client(url, prefix=prefix, timeout=60.0) as client:
            asked = [
                asyncio.ensure_future(
                    client.generate("llama3.2:3b", f"q{i}", options={"num_predict": 3})
                )
                for i in range(REQUESTS)
            ]
            served = asyncio.as_completed(asked)
            await next(served)  # one served, one running, the rest queued
            await leader.kill()
            results = await asyncio.wait_for(asyncio.gather(*asked), 60.0)
    finally:
        await stack.stop(grace=2.0)
    assert all(isinstance(r, GenerateResult) and r.eval_count == 3 for r in results)
    # Each served once, but the one running as the leader died may be served again: its
    # acknowledgement can die with the leader, and nothing stored says it ended (a
    # whole answer streams no chunks), so the work is delivered again (issue 16).
    assert REQUESTS <= sim.engine.stats.generations <= REQUESTS + 1
