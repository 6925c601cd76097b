"""Roles on NATS (deploy/nats/roles.conf), on a real server started with nats.conf: a
client asks and reads its answers but touches nothing internal, an admin also changes the
fleet, an actor runs the whole fleet but no admin verb, the gateway user relays admin's
routes; credentials refused are one typed error, from the SDK and from the terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats.errors
import nkeys
import pytest
import pytest_asyncio
from nats.js.api import ConsumerConfig
from structlog.testing import capture_logs

from actors.runtime.names import ACTORS
from actors.runtime.supervisor import Stack
from actors.simulator import SimulatorServer
from actors.store import EmbeddedPostgres
from bus.client import Client
from bus.connection import NATS, connect
from bus.credentials import Credentials
from bus.errors import Refused
from bus.server import EmbeddedNats
from bus.subjects import Subjects
from tests.conftest import make_config
from tests.helpers import eventually, ollamesh_up, own_database, up_env
from tests.test_cli import run

ROLES = ("client", "admin", "actor", "gateway")
PASSWORDS = {role: f"{role}-{secrets.token_hex(8)}" for role in ROLES}
ROLE_ENV = {f"NATS_{role.upper()}_PASSWORD": pw for role, pw in PASSWORDS.items()}
# roles.conf names the default prefix's subjects.
SUBJECTS = Subjects("llm")
MODEL = "llama3.2:3b"
MODELS = [MODEL, "nomic-embed-text"]
DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "nats"


def role(name: str, password: str | None = None) -> Credentials:
    """The credentials of one role's user (its own password unless told another)."""
    return Credentials(user=name, password=password or PASSWORDS[name])


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server() -> AsyncIterator[EmbeddedNats]:
    """nats.conf as `ollamesh up` starts it, the roles' passwords known."""
    async with EmbeddedNats(env=ROLE_ENV) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fleet(server: EmbeddedNats, postgres: EmbeddedPostgres) -> AsyncIterator[Stack]:
    """Every actor in one process on the actor user's credentials, one simulated host."""
    sim = await SimulatorServer(models=MODELS).start()
    name = f"perm{secrets.token_hex(4)}"
    try:
        async with own_database(postgres.url(), name):
            config = make_config(
                server.url, SUBJECTS.prefix, [sim.url], nats={"auth": {"user": "actor",
                "password": PASSWORDS["actor"]}}, database={"url": postgres.url(name)},
                gateway={"port": 0}, cache={"max_bytes": 1024 * 1024},
            )  # fmt: skip
            stack = Stack(config, actors=ACTORS)
            await stack.start()
            try:
                yield stack
            finally:
                await stack.stop(grace=2.0)
    finally:
        await sim.kill()


@contextlib.asynccontextmanager
async def connected(server: EmbeddedNats, who: str) -> AsyncIterator[NATS]:
    """A connection as role `who` ("local": no credentials, the local user)."""
    credentials = Credentials() if who == "local" else role(who)
    nc = await connect(server.url, name=f"as-{who}", credentials=credentials)
    try:
        yield nc
    finally:
        await nc.close()


async def dropped(nc: NATS, observer: NATS, subject: str, logs: list[dict]) -> None:
    """Assert that `nc` publishing on `subject` reaches nobody: a subscriber with every
    right gets the message `nc` sends after it, and not it; the publisher logs why."""
    marker = SUBJECTS.cancel(secrets.token_hex(4))
    seen: list[str] = []
    arrived = asyncio.Event()

    async def on(msg) -> None:
        seen.append(msg.subject)
        if msg.subject == marker:
            arrived.set()

    subs = [await observer.subscribe(s, cb=on) for s in (subject, marker)]
    await asyncio.sleep(0)  # the SUBs out before the flush (nats-py)
    await observer.flush()
    try:
        await nc.publish(subject, b'{"type": "chunk", "seq": 1, "text": "forged"}')
        await nc.publish(marker, b"")
        await nc.flush()
        await asyncio.wait_for(arrived.wait(), 5.0)
    finally:
        for sub in subs:
            await sub.unsubscribe()
    assert seen == [marker]

    await eventually(lambda: any(subject.lower() in e for e in _denials(logs)))


def _denials(logs: list[dict]) -> list[str]:
    """What the connections logged the server refusing (a publish, a subscription), in
    lower case as nats-py reports it."""
    return [e["error"].lower() for e in logs if e["event"] == "nats_permission_denied"]


async def _work_publish_is_denied(url: str, credentials: Credentials) -> None:
    """Connected with `credentials`, a publish into a work queue is refused (logged)."""
    with capture_logs() as logs:
        nc = await connect(url, name="denied", credentials=credentials)
        try:
            await nc.publish(SUBJECTS.work(MODEL), b"x")
            await nc.flush()
            await eventually(lambda: bool(_denials(logs)))
        finally:
            await nc.close()


def _violations(logs: list[dict]) -> list[dict]:
    """What the server or a connection reported as a permission violation."""
    return [
        e
        for e in logs
        if e["event"] == "nats_permission_denied"
        or (e["event"] == "nats_server_log" and "Violation" in e["line"])
    ]


async def test_an_actor_fleet_serves_a_client_end_to_end(
    fleet: Stack, server: EmbeddedNats
) -> None:
    """Every actor on the actor user: a client user's streamed chat, its replay from the
    stored chunks, a whole generate, an embedding, the fleet's view and the templates the
    reasoning coordinator put; nobody breaks a permission on the way."""
    with capture_logs() as logs:
        async with Client(server.url, timeout=30.0, credentials=role("client")) as client:
            stream = await client.chat(MODEL, [{"role": "user", "content": "hi"}],
                                       stream=True, options={"num_predict": 5})  # fmt: skip
            text = await stream.text()
            assert stream.done is not None and stream.done.eval_count == 5 and text
            replayed = await client.resume(stream.request_id)
            assert await replayed.text() == text
            result = await client.generate(MODEL, "hello", options={"num_predict": 3})
            assert result.eval_count == 3
            assert len((await client.embed("nomic-embed-text", ["a", "b"])).embeddings) == 2
            status = await client.fleet.status()
            assert [h.state for h in status.hosts] == ["up"]
            assert await client.list_prompts()  # the reasoning coordinator's templates
    assert _violations(logs) == []


@pytest.mark.parametrize(
    "subject",
    [
        pytest.param(SUBJECTS.work(MODEL), id="work-queue"),
        pytest.param(SUBJECTS.chain_work, id="chain-queue"),
        pytest.param(SUBJECTS.stream("someone-elses"), id="chunk-or-done"),
        pytest.param(SUBJECTS.event("request"), id="event"),
        pytest.param(SUBJECTS.event("host"), id="host-event"),
        pytest.param(f"$KV.{SUBJECTS.host_bucket}.fake-executor", id="registry-entry"),
        pytest.param(f"$KV.{SUBJECTS.cache_bucket}.fake-answer", id="cache-entry"),
        pytest.param(SUBJECTS.board("fake-executor"), id="load-board"),
        pytest.param(SUBJECTS.models("pull"), id="pull"),
        pytest.param(SUBJECTS.models("delete"), id="delete"),
        pytest.param(SUBJECTS.cache_invalidate, id="invalidate-cache"),
        pytest.param(SUBJECTS.prompts("put"), id="prompt-write"),
        pytest.param(SUBJECTS.keys("create"), id="keys"),
        pytest.param(f"$JS.API.STREAM.DELETE.{SUBJECTS.work_stream}", id="jetstream-admin"),
    ],
)
async def test_a_client_cannot_publish_internally(server: EmbeddedNats, subject: str) -> None:
    """A client's publish on an internal subject or an admin verb reaches no one."""
    with capture_logs() as logs:
        async with connected(server, "client") as nc, connected(server, "local") as observer:
            await dropped(nc, observer, subject, logs)


@pytest.mark.parametrize(
    "subject",
    [
        pytest.param(SUBJECTS.models("pull"), id="pull"),
        pytest.param(SUBJECTS.models("delete"), id="delete"),
        pytest.param(SUBJECTS.models("unload"), id="unload"),
        pytest.param(SUBJECTS.cache_invalidate, id="invalidate-cache"),
        pytest.param(SUBJECTS.prompts("delete"), id="prompt-delete"),
        pytest.param(SUBJECTS.keys("create"), id="keys"),
    ],
)
async def test_an_actor_cannot_use_admin_verbs(server: EmbeddedNats, subject: str) -> None:
    """The actor user runs the fleet, but its publish of an admin verb reaches no one."""
    with capture_logs() as logs:
        async with connected(server, "actor") as nc, connected(server, "local") as observer:
            await dropped(nc, observer, subject, logs)


async def test_a_client_cannot_consume_work(fleet: Stack, server: EmbeddedNats) -> None:
    """A client can make no consumer on the work stream, take nothing from the
    executors' consumers and subscribe to no work queue."""
    work = SUBJECTS.work_stream
    durable = SUBJECTS.work_consumer(MODEL)
    with capture_logs() as logs:
        async with connected(server, "client") as nc, connected(server, "local") as local:
            js = nc.jetstream(timeout=1.0)
            with pytest.raises(nats.errors.TimeoutError):
                await js.add_consumer(work, ConsumerConfig(durable_name="thief"))
            with pytest.raises(nats.errors.TimeoutError):
                await nc.request(f"$JS.API.CONSUMER.MSG.NEXT.{work}.{durable}", b"1", timeout=1.0)
            await nc.subscribe(SUBJECTS.works)
            await nc.flush()
            names = [c.name for c in await local.jetstream().consumers_info(work)]
    assert durable in names and "thief" not in names
    await eventually(lambda: len(_denials(logs)) >= 3)
    denied = _denials(logs)
    # nats-py makes a durable by the legacy subject (CONSUMER.DURABLE.CREATE...).
    assert any(f"create.{work}.thief".lower() in e for e in denied), denied
    assert any(f"consumer.msg.next.{work}".lower() in e for e in denied), denied
    assert any("subscription" in e and SUBJECTS.works in e for e in denied)


async def test_an_admin_pulls_deletes_invalidates_and_writes(
    fleet: Stack, server: EmbeddedNats
) -> None:
    """The admin user pulls a model onto the host and deletes it, invalidates the cache,
    writes a template and creates an API key."""
    async with Client(server.url, timeout=30.0, credentials=role("admin")) as admin:
        pulled = await admin.fleet.pull("smollm:135m", timeout=30.0)
        assert [r.error for r in pulled.results] == [None]
        deleted = await admin.fleet.models("delete", "smollm:135m", timeout=30.0)
        assert [r.error for r in deleted.results] == [None]
        assert await admin.invalidate_cache() >= 0
        assert (await admin.put_prompt("perm_test", "Say {{x}}")).version >= 1
        assert (await admin.keys.create("perm-test")).secret


async def test_the_gateway_user_relays_admin_routes(fleet: Stack, server: EmbeddedNats) -> None:
    """A gateway on the gateway user (actor's rights and admin's verbs) pulls and deletes
    a model for a caller it let through."""
    config = make_config(server.url, SUBJECTS.prefix, [], gateway={"port": 0},
                         nats={"auth": {"user": "gateway", "password": PASSWORDS["gateway"]}})  # fmt: skip
    stack = Stack(config, actors=("gateway",))
    await stack.start()
    try:
        assert stack.gateway is not None
        async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=30.0) as http:
            pull = await http.post("/api/pull", json={"model": "tinyllama:1b", "stream": False})
            assert pull.status_code == 200, pull.text
            gone = await http.request("DELETE", "/api/delete", json={"model": "tinyllama:1b"})
            assert gone.status_code == 200, gone.text
    finally:
        await stack.stop(grace=2.0)


@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        pytest.param(role("client", "wrong"), "refused user 'client'", id="wrong-password"),
        pytest.param(
            Credentials(user="nobody", password="x"), "refused user 'nobody'", id="unknown-user"
        ),
        pytest.param(Credentials(token="not-a-token"), "refused the token given", id="token"),
        pytest.param(
            Credentials(creds="/nonexistent/ci.creds"),
            "NATS_CREDS names /nonexistent/ci.creds, which cannot be read",
            id="missing-creds-file",
        ),
    ],
)
async def test_refused_credentials_are_one_typed_error(
    server: EmbeddedNats, credentials: Credentials, says: str
) -> None:
    """The SDK raises `Refused` at once, saying whose credentials; no retrying forever."""
    async with asyncio.timeout(10.0):
        with pytest.raises(Refused, match=says):
            async with Client(server.url, credentials=credentials):
                pass


async def test_an_nkey_user_connects_with_its_seed(tmp_path: Path) -> None:
    """A user named by its nkey: the SDK signs with the seed file in NATS_NKEY and gets
    its role (a client's: a publish on a work queue goes nowhere)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    (tmp_path / "user.nk").write_bytes(seed)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    # An include is found beside the file that includes it.
    shutil.copy(DEPLOY / "roles.conf", tmp_path)
    conf = tmp_path / "nkey.conf"
    conf.write_text(
        "authorization {\n"
        '  include "roles.conf"\n'
        f"  users = [ {{ nkey: {public}, permissions: $CLIENT }}\n"
        # nats-server takes a role nobody is given for an unknown setting.
        + "".join(f"    {{ user: {r}, password: {PASSWORDS[r]}, permissions: ${r.upper()} }}\n"
                  for r in ROLES if r != "client")
        + "  ]\n}\n"
    )  # fmt: skip
    async with EmbeddedNats(config_file=conf) as nkey_server:
        with pytest.raises(Refused):
            await connect(nkey_server.url, name="anonymous", credentials=Credentials())
        nkey = Credentials(nkey=str(tmp_path / "user.nk"))
        await _work_publish_is_denied(nkey_server.url, nkey)


async def test_a_cluster_node_admits_only_its_users() -> None:
    """deploy/nats/cluster.conf (one node): no connection without credentials, the roles'
    users from the environment, each with its role."""
    env = ROLE_ENV | {"NATS_SERVER_NAME": "solo", "NATS_CLUSTER_LISTEN": "127.0.0.1:-1",
                      "NATS_LEAF_LISTEN": "127.0.0.1:-1"}  # fmt: skip
    env |= {f"NATS_ROUTE_{i}": "nats-route://127.0.0.1:1" for i in (1, 2, 3)}
    async with EmbeddedNats(config_file=DEPLOY / "cluster.conf", env=env) as node:
        with pytest.raises(Refused, match="a connection without credentials"):
            await connect(node.url, name="anonymous", credentials=Credentials())
        with pytest.raises(Refused, match="refused user 'admin'"):
            await connect(node.url, name="wrong", credentials=role("admin", "guess"))
        await _work_publish_is_denied(node.url, role("client"))


async def test_ollamesh_up_and_the_cli_take_credentials_from_the_environment() -> None:
    """`ollamesh up` as the actor user serves `ollamesh generate` as the client user; a
    wrong password is one line and exit 1, for either, and `up` starts nothing."""
    sim = await SimulatorServer(models=MODELS).start()
    try:
        async with EmbeddedNats(env=ROLE_ENV) as own:
            as_actor = {"NATS_USER": "actor", "NATS_PASSWORD": PASSWORDS["actor"]}
            proc = await ollamesh_up(up_env(own.url, sim.url, **as_actor),
                                     "--actors", "router,executor")  # fmt: skip
            try:
                as_client = {"NATS_USER": "client", "NATS_PASSWORD": PASSWORDS["client"]}
                code, out, err = await run("generate", "hi", "-m", MODEL, "--num-predict", "4",
                                           "--nats", own.url, env=as_client)  # fmt: skip
                assert code == 0, err
                assert len(out.split()) == 4
                wrong = {"NATS_USER": "client", "NATS_PASSWORD": "wrong"}
                code, _, err = await run("generate", "hi", "--nats", own.url, env=wrong)
                assert code == 1 and "Traceback" not in err
                assert err.strip().splitlines() == [
                    f"error: refused: NATS at {own.url} refused user 'client':"
                    " authorization violation"
                ]
            finally:
                proc.terminate()
                await proc.wait()
            code, _, err = await run(
                "up", "--actors", "router", "--log-format", "json",
                env=up_env(own.url, sim.url, NATS_USER="actor", NATS_PASSWORD="wrong"),
            )  # fmt: skip
            assert code == 1 and "Traceback" not in err
            assert err.strip().splitlines()[-1] == (
                f"error: refused: NATS at {own.url} refused user 'actor': authorization violation"
            )
    finally:
        await sim.kill()


def test_passwords_never_show_in_a_repr() -> None:
    """A config's or a connection's log line shows who, never the password or token."""
    shown = repr(Credentials(user="actor", password="s3cret", token="t0ken"))
    assert "actor" in shown and "s3cret" not in shown and "t0ken" not in shown


def test_the_local_config_has_the_production_users_and_local() -> None:
    """local.conf (nats.conf's) has auth.conf's users line for line, and `local` besides."""

    def users(name: str) -> list[str]:
        text = (DEPLOY / name).read_text()
        return [line.strip() for line in text.splitlines() if line.strip().startswith("{ user:")]

    local = users("local.conf")
    assert local[:-1] == users("auth.conf") and len(local) == len(ROLES) + 1
    assert local[-1].startswith("{ user: local,") and "permissions" not in local[-1]
    assert "no_auth_user: local" in (DEPLOY / "local.conf").read_text()
    assert "no_auth_user" not in (DEPLOY / "auth.conf").read_text()
