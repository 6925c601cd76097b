"""Hostile but fair input: huge, malformed and odd bodies get short typed errors, and no
message takes a process off NATS."""

from __future__ import annotations

import asyncio

import msgspec
import nats.errors
import pytest

from actors.runtime.supervisor import Stack, run_until_signalled
from bus.actor import State
from bus.client import Client
from bus.connection import NATS
from bus.errors import MESSAGE_MAX, ModelNotFound, PayloadTooLarge
from schemas import Error, decode_reply
from tests.conftest import make_config
from tests.helpers import eventually

MODELS = ["llama3.2:3b", "qwen2.5:7b", "nomic-embed-text"]
BIG = 5 * 1024 * 1024


@pytest.fixture
async def served(sim_factory, stack_factory):
    """A router, an executor and the health monitor in front of one simulated host."""
    sim = await sim_factory(models=MODELS)
    return await stack_factory([sim.url], actors=("router", "executor", "health"))


async def _error(nc: NATS, subject: str, body: dict[str, object]) -> tuple[Error, int]:
    msg = await nc.request(subject, msgspec.json.encode(body), timeout=10)
    reply = decode_reply(msg.data)
    assert isinstance(reply, Error), reply
    header = sum(len(k) + len(v) for k, v in (msg.headers or {}).items())
    return reply, len(msg.data) + header


async def test_a_5mb_role_gets_a_short_bad_request_and_the_router_keeps_serving(
    served, nc: NATS, client: Client, prefix: str
) -> None:
    """The error quotes none of the 5 MB, and the same process answers the next request."""
    body = {"role": "r" * BIG, "prompt": "hi", "stream": False}
    reply, size = await _error(nc, f"{prefix}.v1.generate", body)
    assert reply.code == "bad_request" and "role" in reply.message
    assert size < 2 * MESSAGE_MAX
    result = await client.generate("llama3.2:3b", "hi", options={"num_predict": 2})
    assert result.done


async def test_a_5mb_host_in_models_show_gets_a_short_bad_request(
    served, nc: NATS, client: Client, prefix: str
) -> None:
    """The health monitor answers a huge `host` briefly and keeps serving its subjects."""
    reply, size = await _error(
        nc, f"{prefix}.v1.models.show", {"model": "llama3.2:3b", "host": "h" * BIG}
    )
    assert reply.code == "bad_request" and size < 2 * MESSAGE_MAX
    assert (await client.fleet.status()).hosts


async def test_an_answer_over_max_payload_is_payload_too_large(served, client: Client) -> None:
    """Embeddings of 600 texts (about 9 MB of JSON, over the 8 MB max_payload) are refused
    with a typed error, not a dropped connection; the next request is served."""
    texts = [f"text {i}" for i in range(600)]
    with pytest.raises(PayloadTooLarge, match=r"max_payload"):
        await client.embed("nomic-embed-text", texts)
    assert len((await client.embed("nomic-embed-text", ["one"])).embeddings) == 1


async def test_a_reply_over_max_payload_is_payload_too_large(
    database_url: str, sim_factory, stack_factory, nc: NATS, prefix: str
) -> None:
    """An actor whose answer would exceed max_payload answers `payload_too_large` instead
    and stays connected (here: a template stored just under the limit, read back)."""
    sim = await sim_factory(models=MODELS)
    stack = await stack_factory([sim.url], actors=("prompts",), database={"url": database_url})
    text = "x" * (nc.max_payload - 100)
    put = msgspec.json.encode({"name": "huge", "template": text})
    assert len(put) <= nc.max_payload
    await nc.request(f"{prefix}.v1.prompts.put", put, timeout=30)
    reply, _ = await _error(nc, f"{prefix}.v1.prompts.get", {"name": "huge"})
    assert reply.code == "payload_too_large"
    assert stack.nc is not None and stack.nc.is_connected
    again, _ = await _error(nc, f"{prefix}.v1.prompts.get", {"name": "absent"})
    assert again.code == "bad_request"


async def test_headers_count_against_max_payload_before_sending(served: Stack) -> None:
    """A publish whose headers push it over the limit raises at once; the connection lives."""
    assert served.nc is not None
    payload = b"x" * (served.nc.max_payload - 10)
    with pytest.raises(nats.errors.MaxPayloadError):
        await served.nc.publish("anything", payload, headers={"X-Big": "y" * 100})
    await served.nc.flush(timeout=5)
    assert served.nc.is_connected


async def test_a_connection_closed_for_good_ends_the_process_with_1(
    nats_server, sim_factory, prefix: str
) -> None:
    """When the server closes the connection (here: a message over max_payload sent past
    the check), `ollamesh up` stops and exits 1 rather than live on answering nothing."""
    sim = await sim_factory(models=MODELS)
    stack = Stack(make_config(nats_server.url, prefix, [sim.url]), actors=("router", "executor"))
    runner = asyncio.create_task(run_until_signalled(stack))
    await eventually(lambda: stack.router is not None and stack.router.state is State.RUNNING, 15)
    assert stack.nc is not None
    payload = b"x" * (stack.nc.max_payload - 10)
    # nats-py's own publish, which does not count headers: the server refuses the message.
    await NATS.publish(stack.nc, "anything", payload, headers={"X-Big": "y" * 100})
    assert await asyncio.wait_for(runner, 20) == 1
    assert stack.lost


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("model", "\u0000", id="nul-model"),
        pytest.param("model", "llama3.2:3b\n", id="newline-model"),
        pytest.param("role", "fast\u001b[2J", id="escape-role"),
        pytest.param("request_id", "abc\n", id="newline-request-id"),
        pytest.param("prompt_template", "t\u0000", id="nul-template"),
        pytest.param("model", "m" * 300, id="long-model"),
    ],
)  # fmt: skip
async def test_control_characters_in_names_are_bad_requests(
    served, nc: NATS, prefix: str, field: str, value: str
) -> None:
    """Names (models, roles, ids, templates) with control characters never reach a host."""
    body: dict[str, object] = {"model": "llama3.2:3b", "prompt": "hi", field: value}
    reply, _ = await _error(nc, f"{prefix}.v1.generate", body)
    assert reply.code == "bad_request" and field in reply.message


async def test_free_text_keeps_its_control_characters(served, client: Client) -> None:
    """Prompts are free text: tabs, newlines and even NUL are passed on, not refused."""
    result = await client.generate("llama3.2:3b", "a\tb\nc\u0000d", options={"num_predict": 2})
    assert result.done


@pytest.mark.parametrize("model", ["no-such-model:1b", "null", "*", ""])
async def test_an_unknown_model_is_model_not_found_not_served_by_backup(
    served, client: Client, model: str
) -> None:
    """A model no host has and no role names is not silently served by the backup role."""
    with pytest.raises(ModelNotFound):
        await client.generate(model, "hi", options={"num_predict": 2})


async def test_an_unknown_model_falls_back_when_the_request_asks(served, client: Client) -> None:
    """`fallback: true` keeps the old service's behaviour: the backup role serves."""
    result = await client.generate("no-such-model:1b", "hi", fallback=True)
    assert result.model == "llama3.2:3b" and result.fallback_from == "no-such-model:1b"


@pytest.mark.parametrize("verb", ["generate", "chat", "embed"])
async def test_a_deeply_nested_body_is_a_bad_request(
    served, nc: NATS, prefix: str, verb: str
) -> None:
    """10,000 levels of nesting (in a field the request ignores) are refused as input, not
    a crash answered `internal`."""
    body = b'{"model": "llama3.2:3b", "extra": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    reply = decode_reply((await nc.request(f"{prefix}.v1.{verb}", body, timeout=5)).data)
    assert isinstance(reply, Error) and reply.code == "bad_request", reply
    assert "nested too deeply" in reply.message
