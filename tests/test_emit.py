"""The emitter: every chunk once, in order, and exactly one ending, whatever ends it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from actors.backends.ollama_api import Line
from actors.executor.emit import Emitter
from bus.connection import Connection
from bus.provision import stream_configs
from bus.subjects import Subjects
from schemas import Chunk, Error
from tests.conftest import make_config
from tests.helpers import assert_well_formed, stored_stream

RID = "e1"


@pytest.fixture
async def chunks(nc: Connection, prefix: str) -> AsyncIterator[Subjects]:
    """The chunk stream of this test's prefix."""
    subjects = Subjects(prefix)
    config = stream_configs(subjects, make_config("", prefix, []))[0]
    await nc.jetstream().add_stream(config)
    yield subjects
    await nc.jetstream().delete_stream(config.name)


async def test_closing_while_a_timed_send_is_under_way_loses_no_chunk(
    nc: Connection, chunks: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request fails (close) while the coalescing timer's send is still publishing: the
    ending still goes out, after every chunk, and nothing escapes as CancelledError."""
    emitter = Emitter(
        nc, nc.jetstream(), chunks.chunk_stream, chunks.stream(RID), RID,
        window_s=0.01, publish=True,
    )  # fmt: skip
    await emitter.add([Line(response="a")])  # the first chunk goes at once
    entered, gate = asyncio.Event(), asyncio.Event()
    publish = nc.publish

    async def slow_publish(subject: str, payload: bytes = b"", **kw: object) -> None:
        entered.set()  # a publish that takes a while (a full outgoing buffer, say)
        await gate.wait()
        await publish(subject, payload, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(nc, "publish", slow_publish)
    await emitter.add([Line(response="b")])  # coalesced: the timer sends it
    await entered.wait()
    emitter.close()
    gate.set()
    monkeypatch.setattr(nc, "publish", publish)
    await emitter.finish(Error(code="upstream_error", message="the host failed", request_id=RID))
    stored = await stored_stream(nc, chunks, RID)
    assert_well_formed(stored)
    assert "".join(m.text for m in stored if isinstance(m, Chunk)) == "ab"
