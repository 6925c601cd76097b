"""Bad input gets a typed error at once: never a traceback, never a hang."""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from actors.router import Router
from actors.runtime import supervisor
from bus.actor import Handler
from bus.client import Client
from bus.errors import BadRequest, ModelNotFound, PayloadTooLarge, Unavailable
from schemas import Accepted, Error, decode_reply

MODELS = ["llama3.2:3b", "qwen2.5:7b"]


@pytest.fixture
async def served(sim_factory, stack_factory):
    """A router and executor in front of one simulated host."""
    sim = await sim_factory(models=MODELS)
    return await stack_factory([sim.url], router={"max_request_bytes": 64 * 1024})


@pytest.mark.parametrize(
    ("body", "code", "says"),
    [
        pytest.param(b'{"model": "llama3.2:3b", "prompt": ', "bad_request", "malformed JSON", id="malformed-json"),
        pytest.param(b"[1, 2]", "bad_request", "invalid", id="not-an-object"),
        pytest.param(b'{"model": 7, "prompt": "x"}', "bad_request", "model", id="model-wrong-type"),
        pytest.param(b'{"model": "llama3.2:3b", "prompt": "x", "options": {"num_predict": "many"}}', "bad_request", "num_predict", id="option-wrong-type"),
        pytest.param(b'{"model": "llama3.2:3b", "prompt": "  "}', "bad_request", "prompt is empty", id="empty-prompt"),
        pytest.param(b'{"model": "llama3.2:3b", "prompt": "x", "options": {"num_predict": 1000000000}}', "bad_request", "num_predict", id="absurd-num-predict"),
        pytest.param(b'{"model": "no-such:model", "prompt": "x", "fallback": false}', "model_not_found", "no-such:model", id="unknown-model"),
        pytest.param(b'{"role": "wizard", "prompt": "x"}', "bad_request", "unknown role", id="unknown-role"),
        pytest.param(b'{"model": "llama3.2:3b", "prompt": "x", "format": "yaml"}', "bad_request", "format", id="bad-format"),
    ],
)  # fmt: skip
async def test_bad_generate_requests_get_a_typed_error(
    served, nc, prefix: str, body: bytes, code: str, says: str
) -> None:
    """The router answers each bad body with `error {code}` and the micro-service headers."""
    msg = await nc.request(f"{prefix}.v1.generate", body, timeout=5)
    reply = decode_reply(msg.data)
    assert isinstance(reply, Error), reply
    assert reply.code == code and says in reply.message and not reply.retryable
    assert msg.headers and msg.headers["Nats-Service-Error-Code"] in ("400", "404")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(b'{"model": "llama3.2:3b", "messages": []}', "messages is empty", id="no-messages"),
        pytest.param(b'{"model": "llama3.2:3b", "messages": [{"role": "robot", "content": "x"}]}', "role", id="bad-role"),
        pytest.param(b'{"model": "llama3.2:3b", "messages": "hello"}', "messages", id="messages-not-list"),
    ],
)  # fmt: skip
async def test_bad_chat_requests_get_bad_request(
    served, nc, prefix: str, body: bytes, says: str
) -> None:
    """Chat bodies are checked as strictly as generate bodies."""
    reply = decode_reply((await nc.request(f"{prefix}.v1.chat", body, timeout=5)).data)
    assert isinstance(reply, Error) and reply.code == "bad_request" and says in reply.message


async def test_empty_embed_input_is_refused(served, client: Client) -> None:
    """Embedding nothing is a bad request, not an empty answer."""
    with pytest.raises(BadRequest, match="input is empty"):
        await client.embed("llama3.2:3b", [])


async def test_the_sdk_raises_typed_exceptions(served, client: Client) -> None:
    """Unknown model and bad options surface as exceptions carrying the request id."""
    with pytest.raises(ModelNotFound) as info:
        await client.generate("ghost:1b", "hi", stream=True, fallback=False)
    assert info.value.request_id
    with pytest.raises(BadRequest, match="options"):
        await client.generate("llama3.2:3b", "hi", options={"temperature": "hot"})


async def test_the_sdk_refuses_a_payload_over_max_payload_before_sending(
    served, client: Client
) -> None:
    """A prompt bigger than the server takes fails in the SDK with payload_too_large."""
    huge = "x" * (client.nc.max_payload + 1)
    with pytest.raises(PayloadTooLarge, match="at most"):
        await client.generate("llama3.2:3b", huge)


async def test_the_router_refuses_a_payload_over_its_limit(served, nc, prefix: str) -> None:
    """A body under the server's limit but over the router's gets payload_too_large."""
    body = msgspec.json.encode({"model": "llama3.2:3b", "prompt": "x" * 100_000})
    reply = decode_reply((await nc.request(f"{prefix}.v1.generate", body, timeout=5)).data)
    assert isinstance(reply, Error) and reply.code == "payload_too_large"


async def test_a_reused_request_id_is_refused_for_a_non_streamed_request(
    served, client: Client
) -> None:
    """The request id is the dedup key: the same id twice cannot be answered twice."""
    await client.generate("llama3.2:3b", "hi", request_id="same-id-1", options={"num_predict": 2})
    with pytest.raises(BadRequest, match="already in use"):
        await client.generate("llama3.2:3b", "hi", request_id="same-id-1")


async def test_no_router_means_unavailable(nats_server, prefix: str) -> None:
    """With nothing serving the subject, the SDK says so at once instead of timing out."""
    async with Client(nats_server.url, prefix=prefix) as c:
        with pytest.raises(Unavailable, match="no router"):
            await c.generate("llama3.2:3b", "hi")


async def test_unreachable_nats_is_a_typed_error() -> None:
    """Connecting to a port where no server listens raises Unavailable, not a traceback."""
    with pytest.raises(Unavailable, match="cannot reach NATS"):
        async with Client("nats://127.0.0.1:1", timeout=1) as c:
            await c.generate("m", "x")


class EagerRouter(Router):
    """A router whose first request arrives the moment it subscribes to generate."""

    first: bytes | None = None

    async def serve(self, subject: str, handler: Handler, *, queue: str = "") -> Subscription:
        sub = await super().serve(subject, handler, queue=queue)
        if subject == self.subjects.generate:
            body = b'{"model": "llama3.2:3b", "prompt": "hi", "cache": "force"}'
            self.first = await handler(Msg(self.nc, subject=subject, reply="", data=body))
        return sub


async def test_a_request_arriving_the_moment_the_router_subscribes_is_served(
    sim_factory, stack_factory, monkeypatch: pytest.MonkeyPatch, nc, prefix: str
) -> None:
    """The router builds the state its handlers use before it subscribes them: a request
    that arrives at once is admitted, not failed on a missing attribute."""
    sim = await sim_factory(models=MODELS)
    await stack_factory([sim.url], actors=("executor",))
    monkeypatch.setattr(supervisor, "Router", EagerRouter)
    stack = await stack_factory([sim.url], actors=("router",))
    assert isinstance(stack.router, EagerRouter)
    accepted = decode_reply(stack.router.first or b"")
    assert isinstance(accepted, Accepted), accepted
