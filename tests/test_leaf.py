"""A GPU site behind a leaf node (deploy/nats/leaf.conf), for real: the hub a three-node
cluster of deploy/nats/cluster.conf, an executor connected to the leaf only, the router and
the client on the hub; a streamed chat served end to end."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from nats.js.errors import NoKeysError

from actors.runtime.supervisor import Stack
from actors.simulator import SimulatorServer
from bus.client import Client
from bus.connection import connect
from bus.credentials import Credentials
from bus.server import EmbeddedNats, packaged_config
from bus.subjects import Subjects
from schemas.internal import decode_host
from tests._cluster_fixtures import DEPLOY, config_limits, running_cluster
from tests.conftest import make_config
from tests.helpers import eventually

MODEL = "llama3.2:3b"
SUBJECTS = Subjects("llm")  # the roles name the default prefix's subjects
PASSWORDS = {role: f"p{secrets.token_hex(8)}" for role in ("client", "admin", "actor", "gateway")}
ROLE_ENV = {f"NATS_{role.upper()}_PASSWORD": pw for role, pw in PASSWORDS.items()}


def role(name: str) -> Credentials:
    return Credentials(user=name, password=PASSWORDS[name])


@pytest_asyncio.fixture(loop_scope="session")
async def site(tmp_path: Path) -> AsyncIterator[tuple[list[EmbeddedNats], EmbeddedNats]]:
    """The hub (three nodes, the roles' users known) and a leaf node of leaf.conf as it is,
    without JetStream, linked to the hub as `actor`."""
    for name in ("leaf.conf", "auth.conf", "roles.conf"):
        shutil.copy(DEPLOY / name, tmp_path)
    async with running_cluster(env=ROLE_ENV) as hub:
        assert hub[0].leaf_port is not None
        hub_url = f"nats-leaf://actor:{PASSWORDS['actor']}@127.0.0.1:{hub[0].leaf_port}"
        leaf = EmbeddedNats(
            config_file=tmp_path / "leaf.conf",
            jetstream=False,
            env=ROLE_ENV | {"NATS_HUB_URL": hub_url},
        )
        async with leaf:
            yield hub, leaf


async def test_an_executor_behind_a_leaf_node_serves_the_hub_s_router(
    site: tuple[list[EmbeddedNats], EmbeddedNats],
) -> None:
    """The executor reaches the hub's work queue, buckets and streams only through the
    leaf: its registry entry appears in the hub's bucket, and a client on the hub gets a
    streamed chat it served, and a replay of it."""
    hub, leaf = site
    sim = await SimulatorServer(models=[MODEL]).start()
    actor = {"auth": {"user": "actor", "password": PASSWORDS["actor"]}, "replicas": 3}
    gpu = Stack(make_config(leaf.url, SUBJECTS.prefix, [sim.url], nats=actor),
                actors=("executor",))  # fmt: skip
    router = Stack(make_config(hub[1].url, SUBJECTS.prefix, [], nats=actor), actors=("router",))
    try:
        await router.start()
        await gpu.start()
        probe = await connect(hub[2].url, name="hub-probe", credentials=role("actor"))
        try:
            hosts = await probe.jetstream().key_value(SUBJECTS.host_bucket)

            async def registered() -> bool:
                try:
                    keys = await hosts.keys()
                except NoKeysError:
                    return False
                entries = [await hosts.get(k) for k in keys]
                infos = [decode_host(e.value) for e in entries if e.value]
                return any(info.host == sim.url and MODEL in info.models for info in infos)

            await eventually(registered, timeout=20.0)
        finally:
            await probe.close()
        async with Client(hub[2].url, timeout=30.0, credentials=role("client")) as client:
            stream = await client.chat(MODEL, [{"role": "user", "content": "hi"}], stream=True,
                                       options={"num_predict": 6})  # fmt: skip
            text = await stream.text()
            assert stream.done is not None and stream.done.eval_count == 6 and text
            assert stream.done.host == sim.url
            assert await (await client.resume(stream.request_id)).text() == text
    finally:
        await gpu.stop(grace=2.0)
        await router.stop(grace=2.0)
        await sim.kill()
    assert sim.engine.stats.generations == 1


def test_the_leaf_config_has_the_single_nodes_limits() -> None:
    """leaf.conf sets nats.conf's connection limits (JetStream's are the hub's): a site's
    executors publish what the hub takes, and a slow one gets the same room."""

    single = config_limits(packaged_config(), nested=False)
    assert single and config_limits(DEPLOY / "leaf.conf", nested=False) == single
