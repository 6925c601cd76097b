"""API keys of the HTTP gateway: open on loopback without them, required on every route
with them, revoked on every gateway within one event, their limits, models and admin
rights, closed (503) when they cannot be read; `ollamesh keys` from the terminal."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
from typing import Any
from urllib.parse import urlsplit

import httpx
import ollama
import openai
import pytest
import structlog
from nats.js.kv import KeyValue

from actors.gateway.http import App, Family, Reply, Request, json_reply
from actors.gateway.keys import Key, KeyGuard, KeyRing, digest
from actors.gateway.ollama import error_reply
from bus.client import Client
from bus.errors import BadRequest, Unavailable
from bus.limits import SharedLimits
from tests.helpers import eventually, refuse_connections

MODELS = ["llama3.2:3b", "qwen2.5:7b"]
# Long enough that only an event, never a periodic reload, explains a change in time.
NO_RELOAD = {"keys_reload_s": 300.0, "keys_max_age_s": 600.0}


async def _get(url: str, path: str = "/", key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await http.get(path, headers=headers)


async def _status(url: str, key: str | None = None, path: str = "/") -> int:
    return (await _get(url, path, key)).status_code


@pytest.fixture
async def keyed(database_url, sim_factory, stack_factory):
    """A router, an executor and a gateway with a database (so keys); one host."""
    sim = await sim_factory(models=MODELS)

    async def start(actors: tuple[str, ...] = ("router", "executor", "gateway"), **gateway: Any):
        return await stack_factory(
            [sim.url], actors=actors, database={"url": database_url},
            gateway={"port": 0, **gateway},
        )  # fmt: skip

    return start


# Without keys.


@pytest.mark.parametrize(
    ("allow_open", "bound"),
    [(False, "127.0.0.1"), (True, "0.0.0.0")],
    ids=["default", "allow_open"],
)
async def test_without_a_database_the_gateway_is_open_on_loopback_only(
    sim_factory, stack_factory, allow_open: bool, bound: str
) -> None:
    """No database, so no keys: told to listen on 0.0.0.0, the gateway listens on 127.0.0.1
    and says so, unless `allow_open`; either way every route is open and says so."""
    sim = await sim_factory(models=MODELS)
    with structlog.testing.capture_logs() as logs:
        stack = await stack_factory(
            [sim.url], actors=("gateway",),
            gateway={"port": 0, "host": "0.0.0.0", "allow_open": allow_open},
        )  # fmt: skip
    assert stack.gateway is not None and stack.pool is None
    url = stack.gateway.url
    assert urlsplit(url).hostname == bound
    said = {e["event"]: e for e in logs}
    assert said["gateway_keys"]["required"] is False
    assert ("gateway_loopback_only" in said) is not allow_open
    port = urlsplit(url).port
    assert await _status(f"http://127.0.0.1:{port}") == 200


async def test_a_gateway_with_keys_listens_as_configured_and_says_keys_are_required(
    keyed, client: Client
) -> None:
    """With keys in the database at start, `host` is used as it is (here 0.0.0.0)."""
    await keyed(actors=("gateway",))
    await client.keys.create("first")
    with structlog.testing.capture_logs() as logs:
        second = await keyed(actors=("gateway",), host="0.0.0.0")
    assert second.gateway is not None
    assert urlsplit(second.gateway.url).hostname == "0.0.0.0"
    said = {e["event"]: e for e in logs}
    assert said["gateway_keys"]["required"] is True and said["gateway_keys"]["keys"] == 1
    assert "gateway_loopback_only" not in said


# With keys, end to end.


async def test_a_key_from_the_sdk_is_required_on_every_route_then(keyed, client: Client) -> None:
    """Open before any key; once one exists, every route (`/`, `/api/version`, a
    generate) needs its bearer: none or a wrong one is 401 in Ollama's shape."""
    stack = await keyed()
    url = stack.gateway.url
    assert await _status(url) == 200
    made = await client.keys.create("ci")
    assert made.secret.startswith("olm_") and made.key.prefix == made.secret[:12]
    for path in ("/", "/api/version"):
        missing = await _get(url, path)
        assert missing.status_code == 401, path
        assert "Authorization: Bearer" in missing.json()["error"]
        wrong = await _get(url, path, "olm_" + "x" * 43)
        assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]
        assert await _status(url, made.secret, path) == 200
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = {"model": "llama3.2:3b", "prompt": "hi", "stream": False,
                "options": {"num_predict": 4}}  # fmt: skip
        refused = await http.post("/api/generate", json=body)
        answered = await http.post(
            "/api/generate", json=body, headers={"authorization": f"Bearer {made.secret}"}
        )
    assert refused.status_code == 401
    assert answered.status_code == 200 and answered.json()["eval_count"] == 4
    listed = await client.keys.list()
    assert [k.key_id for k in listed] == [made.key.key_id]
    assert made.secret not in repr(listed) and digest(made.secret).hex() not in repr(listed)


async def test_the_official_clients_send_their_key(keyed, client: Client) -> None:
    """The `ollama` client with an Authorization header and the `openai` client with its
    `api_key` are served; without the key, each raises its own 401."""
    stack = await keyed()
    url = stack.gateway.url
    made = await client.keys.create("clients")
    headers = {"Authorization": f"Bearer {made.secret}"}
    async with ollama.AsyncClient(host=url, headers=headers) as keyed_ollama:
        answer = await keyed_ollama.generate("fast", "hi", options={"num_predict": 3})
    assert answer.eval_count == 3
    async with ollama.AsyncClient(host=url) as bare:
        with pytest.raises(ollama.ResponseError) as refused:
            await bare.generate("fast", "hi")
    assert refused.value.status_code == 401
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=made.secret) as keyed_openai:
        chat = await keyed_openai.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
    assert chat.usage is not None and chat.usage.completion_tokens == 3
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="olm_wrong") as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()


async def test_a_revoked_key_is_refused_by_every_gateway_within_one_event(
    keyed, client: Client
) -> None:
    """Two gateways that read their keys every 300 s: a key made through one works on the
    other within one event, and once revoked is refused by both within one event."""
    first, second = await keyed(**NO_RELOAD), await keyed(actors=("gateway",), **NO_RELOAD)
    urls = [first.gateway.url, second.gateway.url]
    made = await client.keys.create("shared")
    await client.keys.create("other")  # so that revoking "shared" leaves keys required

    async def every(status: int) -> bool:
        return all([await _status(u, made.secret) == status for u in urls])

    await eventually(lambda: every(200), timeout=5)
    revoked = await client.keys.revoke(made.key.key_id)
    assert revoked.revoked_at is not None
    await eventually(lambda: every(401), timeout=5)
    again = await client.keys.revoke(made.key.key_id)  # changes nothing
    assert again.revoked_at == revoked.revoked_at

    async def used_noted() -> bool:
        found = {k.key_id: k for k in await client.keys.list()}
        return found[made.key.key_id].last_used_at is not None

    await eventually(used_noted, timeout=5)  # written at the reload each event causes
    assert [k.name for k in await client.keys.list(revoked=False)] == ["other"]


async def test_a_key_over_its_rpm_gets_429_with_retry_after(keyed, client: Client) -> None:
    """rpm 2: two requests pass, the third is 429 with Retry-After (about 30 s: a minute's
    allowance then one every 30 s); another key's budget is its own."""
    stack = await keyed(actors=("gateway",))
    url = stack.gateway.url
    limited = await client.keys.create("limited", rpm=2)
    free = await client.keys.create("free")
    assert [await _status(url, limited.secret) for _ in range(2)] == [200, 200]
    refused = await _get(url, "/api/version", limited.secret)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert "API key 'limited' is over its rate limit (2 requests/min)" in refused.json()["error"]
    assert await _status(url, free.secret) == 200


async def test_admin_routes_and_models_end_to_end(keyed, client: Client) -> None:
    """Ollama's pull and delete take admin keys only (403, the fleet never asked); a key
    limited to some models is 403 for another one, and served for its own."""
    stack = await keyed(("router", "executor", "health", "gateway"))
    url = stack.gateway.url
    user = await client.keys.create("user", models=["fast", "llama3.2:3b"])
    admin = await client.keys.create("ops", admin=True)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        def as_(key: str) -> dict[str, str]:
            return {"authorization": f"Bearer {key}"}

        for method, path, model in (("POST", "/api/pull", "llama3.2:3b"),
                                    ("DELETE", "/api/delete", "no-such:1b")):  # fmt: skip
            body = {"model": model, "stream": False}
            refused = await http.request(method, path, json=body, headers=as_(user.secret))
            assert refused.status_code == 403 and "an admin route" in refused.json()["error"]
            served = await http.request(method, path, json=body, headers=as_(admin.secret))
            assert served.status_code not in (401, 403), served.text
        asked = {"prompt": "hi", "stream": False, "options": {"num_predict": 2}}
        other = await http.post(
            "/api/generate", json={"model": "qwen2.5:7b", **asked}, headers=as_(user.secret)
        )
        assert other.status_code == 403 and "may not use 'qwen2.5:7b'" in other.json()["error"]
        for model in ("llama3.2:3b", "fast"):
            own = await http.post(
                "/api/generate", json={"model": model, **asked}, headers=as_(user.secret)
            )
            assert own.status_code == 200, own.text
        # The model lists show such a key its own models only; a role as its own name.
        tags = (await http.get("/api/tags", headers=as_(user.secret))).json()["models"]
        listed = (await http.get("/v1/models", headers=as_(user.secret))).json()["data"]
        everything = (await http.get("/api/tags", headers=as_(admin.secret))).json()["models"]
        role_only = await http.post("/api/generate", headers=as_(user.secret),
                                    json={"role": "fast", **asked})  # fmt: skip
    assert {m["name"] for m in tags} == {"llama3.2:3b", "fast"} == {m["id"] for m in listed}
    assert {"qwen2.5:7b", "llama3.2:3b", "fast"} <= {m["name"] for m in everything}
    assert role_only.status_code == 200, role_only.text


async def test_keys_that_cannot_be_read_close_the_gateway_with_503(
    keyed, client: Client, postgres, prefix: str
) -> None:
    """Postgres refuses the keys' database: once the keys read last are older than
    `keys_max_age_s`, every request is 503 (never served without its key), and served
    again once they can be read."""
    stack = await keyed(actors=("gateway",), keys_reload_s=0.1, keys_max_age_s=0.5)
    url = stack.gateway.url
    made = await client.keys.create("ci")
    assert await _status(url, made.secret) == 200
    await refuse_connections(postgres.url(), prefix, True)
    try:
        seen: set[int] = set()

        async def closed() -> bool:
            seen.add(await _status(url))  # no key: 401, then 503, never served
            return await _status(url, made.secret) == 503

        await eventually(closed, timeout=10)
        assert seen <= {401, 503}
        shut = await _get(url, "/api/version", made.secret)
        assert "cannot read its API keys" in shut.json()["error"]
        assert shut.headers["retry-after"] == "1"
    finally:
        await refuse_connections(postgres.url(), prefix, False)

    async def served() -> bool:
        return await _status(url, made.secret) == 200

    await eventually(served, timeout=10)
    assert await _status(url) == 401


# The guard's contract, through the App alone (no database, no fleet).


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ring(*keys: tuple[str, dict[str, Any]], clock: _Clock | None = None) -> KeyRing:
    """A ring holding a key per (secret, fields), read just now."""
    ring = KeyRing(60.0, clock=clock or _Clock())
    made = [Key.of(f"{i:016x}", f"k{i}", digest(secret), **fields)
            for i, (secret, fields) in enumerate(keys)]  # fmt: skip
    ring.replace(made, ring.now())
    return ring


async def _handler(req: Request) -> Reply:
    """A route that names the body's model and says it used `spent` tokens."""
    asked = json.loads(req.body or b"{}")
    req.allow(asked.get("model"))
    await req.spent(asked.get("spent", 0))
    return json_reply(200, {"ok": True})


def _app(guard: KeyGuard) -> App:
    routes = {("POST", "/work"): _handler, ("POST", "/admin"): _handler}
    family = Family("/", routes, error_reply, admin=frozenset({("POST", "/admin")}))
    return App([family], 1 << 20, guard=guard)


async def _post(
    app: App, path: str, body: dict[str, Any], key: str | None = None, client: str = "127.0.0.1"
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    transport = httpx.ASGITransport(app=app, client=(client, 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return await http.post(path, json=body, headers=headers)


async def test_a_key_without_admin_rights_is_forbidden_on_an_admin_route(kv: KeyValue) -> None:
    """A family's admin routes take admin keys only (403 for the others, who may use the
    rest); a key's admin right is nothing else."""
    ring = _ring(("olm_admin", {"admin": True}), ("olm_user", {}))
    app = _app(KeyGuard(ring, SharedLimits(kv), allow_open=False))
    assert (await _post(app, "/admin", {}, "olm_admin")).status_code == 200
    refused = await _post(app, "/admin", {}, "olm_user")
    assert refused.status_code == 403
    assert refused.json()["error"] == "API key 'k1' may not use POST /admin: an admin route"
    assert (await _post(app, "/work", {}, "olm_user")).status_code == 200
    assert (await _post(app, "/admin", {})).status_code == 401


@pytest.mark.parametrize(
    ("model", "status"),
    [("llama3", 200), ("llama3:latest", 200), ("fast", 200), ("fast:latest", 200),
     ("llama3.2:3b", 403), ("llama3:8b", 403), (None, 403), ("", 403)],
)  # fmt: skip
async def test_a_key_may_name_only_its_models(kv: KeyValue, model: str | None, status: int) -> None:
    """Models compare canonically (`llama3` is `llama3:latest`); a role alias is its own
    name (not the model it stands for); naming none is leaving the choice to the fleet,
    which a limited key may not. A key without models may name any."""
    ring = _ring(("olm_some", {"models": ["llama3", "fast"]}), ("olm_all", {}))
    app = _app(KeyGuard(ring, SharedLimits(kv), allow_open=False))
    answer = await _post(app, "/work", {"model": model}, "olm_some")
    assert answer.status_code == status, answer.text
    if status == 403:
        assert "API key 'k0' may" in answer.json()["error"]
    assert (await _post(app, "/work", {"model": model}, "olm_all")).status_code == 200


@pytest.mark.parametrize(
    ("client", "allow_open", "status"),
    [("127.0.0.1", False, 200), ("::1", False, 200), ("::ffff:127.0.0.1", False, 200),
     ("10.1.2.3", False, 403), ("2001:db8::1", False, 403), ("10.1.2.3", True, 200)],
)  # fmt: skip
async def test_without_keys_only_clients_on_this_machine_are_served(
    kv: KeyValue, client: str, allow_open: bool, status: int
) -> None:
    """No key (all revoked, say, on a gateway listening wide): clients elsewhere are refused
    unless `allow_open`, whatever address the gateway listens on."""
    app = _app(KeyGuard(_ring(), SharedLimits(kv), allow_open=allow_open))
    answer = await _post(app, "/work", {}, client=client)
    assert answer.status_code == status
    if status == 403:
        assert "no API keys" in answer.json()["error"]


async def test_keys_never_read_or_read_too_long_ago_refuse_everything(kv: KeyValue) -> None:
    """Keys not read yet, or read longer ago than their max age: 503 with Retry-After for
    every request, keyed or not, admin route or not; fresh again, served again."""
    clock = _Clock()
    never = KeyRing(60.0, clock=clock)
    stale = _ring(("olm_a", {}), clock=clock)
    for ring in (never, stale):
        app = _app(KeyGuard(ring, SharedLimits(kv), allow_open=True))
        clock.now += 61.0
        for path, key in (("/work", None), ("/work", "olm_a"), ("/admin", "olm_a")):
            answer = await _post(app, path, {}, key)
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    stale.replace([Key.of("0000000000000000", "k0", digest("olm_a"))], clock.now)
    app = _app(KeyGuard(stale, SharedLimits(kv), allow_open=False))
    assert (await _post(app, "/work", {}, "olm_a")).status_code == 200


async def test_spent_tokens_settle_the_key_s_tokens_per_minute(kv: KeyValue) -> None:
    """tpm 1000: the estimate (body/4) is charged at admission, the answer's real tokens
    settled after; 1000 spent leave nothing for the next request, which is 429."""
    ring = _ring(("olm_t", {"tpm": 1000}))
    app = _app(KeyGuard(ring, SharedLimits(kv), allow_open=False))
    assert (await _post(app, "/work", {"spent": 0}, "olm_t")).status_code == 200
    assert (await _post(app, "/work", {"spent": 1000}, "olm_t")).status_code == 200
    refused = await _post(app, "/work", {"spent": 0}, "olm_t")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "1000 tokens/min" in refused.json()["error"]


def test_a_ring_read_before_a_revocation_does_not_bring_the_key_back() -> None:
    """A revocation heard while a read of the database is under way outlives that read;
    the next read, started after it, decides."""
    clock = _Clock()
    ring = KeyRing(60.0, clock=clock)
    key = Key.of("00000000000000aa", "k", digest("olm_k"))
    read_at = clock.now
    clock.now += 1
    ring.drop(key.key_id)
    ring.replace([key], read_at)  # the read saw the key before it was revoked
    assert ring.find(b"olm_k") is None
    clock.now += 1
    ring.replace([key], clock.now)  # a read after the revocation (say, made again)
    assert ring.find(b"olm_k") == key


# The SDK and the terminal.


async def test_the_sdk_says_bad_input_before_sending_and_no_gateway_as_unavailable(
    client: Client,
) -> None:
    """A bad name, limit or model is `BadRequest` at once; with no gateway with a database
    on the prefix, `Unavailable` naming what is missing."""
    for fields in ({"name": "two words"}, {"name": "ci", "rpm": 0}, {"name": "ci", "models": []},
                   {"name": "x" * 65}, {"name": "ci", "models": ["a\x00"]}):  # fmt: skip
        with pytest.raises(BadRequest):
            await client.keys.create(**fields)
    with pytest.raises(BadRequest):
        await client.keys.revoke("not-an-id")
    with pytest.raises(Unavailable, match="no gateway with a database"):
        await client.keys.list()


async def _ollamesh(*args: str) -> tuple[int | None, str, str]:
    """Run `python -m actors ARGS`; return (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "actors", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=os.environ.copy(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def _one_line(err: str) -> None:
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


async def test_keys_from_the_terminal(keyed, client: Client, nats_server, prefix: str) -> None:
    """`keys create` prints the secret once (alone on stdout) and says it cannot be shown
    again; `keys list` shows its prefix, never the secret nor its digest; `keys revoke`
    of an unknown id, or bad input, is one line and exit 1."""
    stack = await keyed(actors=("gateway",))
    await client.keys.create("other")  # revoking "ci" leaves keys required
    bus = ("--nats", nats_server.url, "--prefix", prefix)
    code, out, err = await _ollamesh(
        "keys", "create", "ci", "--rpm", "60", "--model", "fast", "--model", "llama3", *bus
    )
    assert code == 0, err
    secret = out.strip()
    assert out.count("\n") == 1 and secret.startswith("olm_") and len(secret) == 47
    assert "cannot be shown again" in err and secret not in err
    key_id = re.search(r"API key ([0-9a-f]{16}) 'ci'", err)[1]  # type: ignore[index]
    assert await _status(stack.gateway.url, secret) == 200

    code, listed, err = await _ollamesh("keys", "list", *bus)
    assert code == 0, err
    assert key_id in listed and secret[:12] in listed and "fast, llama3" in listed
    assert secret not in listed and secret[12:20] not in listed
    assert hashlib.sha256(secret.encode()).hexdigest() not in listed

    code, _, err = await _ollamesh("keys", "revoke", "0123456789abcdef", *bus)
    assert code == 1
    _one_line(err)
    assert "no API key 0123456789abcdef" in err
    code, out, err = await _ollamesh("keys", "revoke", key_id, *bus)
    assert code == 0 and f"revoked API key {key_id} 'ci'" in out, err
    assert await _status(stack.gateway.url, secret) == 401

    for bad in (("create", "ci", "--rpm", "0"), ("create", "two words"), ("revoke", "nope")):
        code, _, err = await _ollamesh("keys", *bad, *bus)
        assert code == 1, bad
        _one_line(err)
    code, _, err = await _ollamesh("keys", "list", "--nats", nats_server.url, "--prefix", "nogw")
    assert code == 1 and "no gateway with a database" in err
    _one_line(err)
