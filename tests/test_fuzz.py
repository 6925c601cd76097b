"""Every request/reply subject against hostile bodies: a typed answer within a second,
no actor dies, and the next valid request is served."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.runtime.supervisor import Stack
from actors.simulator import SimulatorServer
from bus.actor import State
from bus.client import Client
from schemas import ErrorCode
from tests.conftest import make_config
from tests.helpers import own_database

MODEL = "llama3.2:3b"


@dataclass
class Fleet:
    """The stack under fuzzing, a client of it, how many bodies it was sent, and the
    longest it took to answer one."""

    stack: Stack
    client: Client
    fuzzed: int = 0
    slowest_s: float = 0.0


# Names a hostile client tries: control characters, wildcards, path tricks, huge ones.
HOSTILE_NAMES = st.one_of(
    st.sampled_from(["", " ", "*", ">", "null", "..", "../../etc/passwd", "a.b.c", "$SRV"]),
    st.text(min_size=1, max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x1F), min_size=1, max_size=8),
    st.builds(lambda n: "m" * n, st.integers(200, 100_000)),
)
JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), HOSTILE_NAMES
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = [
    "model", "role", "task", "prompt", "messages", "input", "options", "format", "images",
    "request_id", "deadline_ms", "priority", "cache", "stream", "fallback", "keep_alive",
    "prompt_template", "variables", "name", "template", "version", "host", "verb",
]  # fmt: skip


def _object(fields: dict[str, Any]) -> bytes:
    return msgspec.json.encode(fields)


BODIES = st.one_of(
    st.binary(max_size=64),  # not JSON at all
    st.sampled_from([b"", b"{", b"[]", b"null", b'"x"', b"1e999", b"{" * 3 + b"}"]),
    st.integers(10, 20_000).map(lambda n: b'{"x": ' + b"[" * n + b"]" * n + b"}"),
    st.builds(_object, st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6)),
    st.builds(_object, st.fixed_dictionaries({"model": HOSTILE_NAMES, "prompt": st.text()})),
    st.builds(
        _object,
        st.fixed_dictionaries(
            {"model": st.just(MODEL), "messages": JSON, "options": JSON, "stream": st.just(False)}
        ),
    ),
)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def fleet(nats_server, postgres, replicas: int) -> AsyncIterator[Fleet]:
    """Every actor in one stack, on a database and a prefix of this module's own (the
    stack and its client on different nodes when `nats_server` is a cluster)."""
    prefix = f"f{secrets.token_hex(4)}"
    async with own_database(postgres.url(), prefix):
        sim = await SimulatorServer(models=[MODEL, "nomic-embed-text"]).start()
        config = make_config(
            nats_server.url,
            prefix,
            [sim.url],
            nats={"replicas": replicas},
            database={"url": postgres.url(prefix)},
            router={"max_num_predict": 64},  # a valid fuzzed body never generates for long
        )
        stack = Stack(config)
        await stack.start()
        client = await Client(nats_server.url, prefix=prefix, timeout=10).connect()
        yield Fleet(stack, client)
        await client.close()
        await stack.stop(grace=2.0)
        await sim.kill()


def _subjects(stack: Stack) -> list[str]:
    """The request/reply subjects the stack's actors serve (their queue-group endpoints)."""
    return sorted({e.subject for a in stack.actors for e in a.discovery.endpoints if e.queue_group})


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_every_subject_answers_hostile_bodies_with_a_typed_error(fleet, data) -> None:
    """Malformed, oversized, deeply nested, wrongly typed bodies and hostile names get an
    answer within 1 s: a typed error (never `internal`) or a well-formed reply."""
    subject = data.draw(st.sampled_from(_subjects(fleet.stack)), label="subject")
    body = data.draw(BODIES, label="body")
    fleet.fuzzed += 1
    began = time.perf_counter()
    try:
        msg = await fleet.client.nc.request(subject, body, timeout=1.0)
    except nats.errors.TimeoutError:
        pytest.fail(f"no answer within 1 s on {subject} to {body[:200]!r}")
    fleet.slowest_s = max(fleet.slowest_s, time.perf_counter() - began)
    reply = msgspec.json.decode(msg.data)
    if isinstance(reply, dict) and reply.get("type") == "error":
        assert reply["code"] in set(ErrorCode) - {ErrorCode.INTERNAL}, (subject, body[:200], reply)
        assert len(reply["message"]) <= 2000


async def test_after_the_fuzzing_every_actor_runs_and_serves(fleet) -> None:
    """No actor died, no loop crashed, the connection lives, and a valid request works."""
    stack, client = fleet.stack, fleet.client
    assert fleet.fuzzed >= 400  # it runs after the fuzzing, in this module's order
    print(
        f"\nfuzzed {fleet.fuzzed} bodies on {len(_subjects(stack))} subjects:"
        f" slowest answer {fleet.slowest_s * 1000:.0f} ms"
    )
    assert stack.nc is not None and stack.nc.is_connected and not stack.lost
    for actor in stack.actors:
        assert actor.state is State.RUNNING, actor.name
        for name, status in actor.loops.items():
            assert status.restarts == 0, (actor.name, name, status)
    result = await client.generate(MODEL, "still here", options={"num_predict": 3})
    assert result.eval_count == 3
