"""The bus layer against a real nats-server: launcher, provisioning, actor runtime."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import msgspec
from nats.aio.msg import Msg

from bus.actor import Actor
from bus.config import Config
from bus.connection import connect
from bus.errors import BadRequest
from bus.provision import provision
from bus.server import EmbeddedNats
from bus.subjects import Subjects
from schemas import Error, decode_reply


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_embedded_server_keeps_jetstream_data_across_restarts(tmp_path: Path) -> None:
    """On a configured port and data dir, what JetStream stored survives a restart."""
    port = free_port()
    config, subjects = Config(), Subjects("keep")
    async with EmbeddedNats(port=port, data_dir=tmp_path) as server:
        assert server.url == f"nats://127.0.0.1:{port}"
        nc = await connect(server.url, name="t")
        await provision(nc.jetstream(), subjects, config)
        await nc.jetstream().publish(subjects.event("x"), b"kept")
        await nc.drain()
    async with EmbeddedNats(port=port, data_dir=tmp_path) as server:
        nc = await connect(server.url, name="t")
        msg = await nc.jetstream().get_last_msg(subjects.event_stream, subjects.event("x"))
        assert msg.data == b"kept"
        await nc.drain()


async def test_provisioning_is_idempotent_and_applies_changes(nc, prefix: str) -> None:
    """A second run changes nothing; a changed setting is applied to the existing stream."""
    js, subjects = nc.jetstream(), Subjects(prefix)
    await provision(js, subjects, Config())
    await provision(js, subjects, Config())
    changed = msgspec.convert({"nats": {"chunk_max_age_s": 60.0}}, Config)
    await provision(js, subjects, changed)
    info = await js.stream_info(subjects.chunk_stream)
    assert info.config.max_age == 60.0
    work = await js.stream_info(subjects.work_stream)
    assert work.config.retention == "workqueue" and work.config.duplicate_window == 120.0


class _Echo(Actor):
    name = "echo"

    async def setup(self) -> None:
        await self.serve(f"{self.subjects.prefix}.echo", self.handle)

    async def handle(self, msg: Msg) -> bytes | None:
        if msg.data == b"bad":
            raise BadRequest("bad input")
        if msg.data == b"bug":
            raise KeyError("oops")
        if msg.data == b"slow":
            await asyncio.Event().wait()
        return msg.data


async def test_actor_turns_failures_into_typed_replies(nc, prefix: str) -> None:
    """A typed failure keeps its code; a bug becomes `internal`; the actor keeps serving."""
    actor = _Echo(nc, Subjects(prefix))
    await actor.start()
    try:
        subject = f"{prefix}.echo"
        bad = decode_reply((await nc.request(subject, b"bad", timeout=5)).data)
        assert isinstance(bad, Error) and bad.code == "bad_request"
        msg = await nc.request(subject, b"bug", timeout=5)
        bug = decode_reply(msg.data)
        assert isinstance(bug, Error) and bug.code == "internal" and "KeyError" in bug.message
        assert msg.headers and msg.headers["Nats-Service-Error-Code"] == "500"
        assert (await nc.request(subject, b"still here", timeout=5)).data == b"still here"
    finally:
        await actor.stop(grace=1)


async def test_actor_refuses_work_beyond_its_limit_and_stops_within_grace(nc, prefix: str) -> None:
    """At its concurrency limit an actor answers `overloaded`; stop cancels work after grace."""
    actor = _Echo(nc, Subjects(prefix), max_concurrent=1)
    await actor.start()
    subject = f"{prefix}.echo"
    # Messages from one connection are dispatched in order: the slow one holds the slot
    # before the request below is looked at.
    await nc.publish(subject, b"slow")
    reply = decode_reply((await nc.request(subject, b"x", timeout=5)).data)
    assert isinstance(reply, Error) and reply.code == "overloaded" and reply.retryable
    await actor.stop(grace=0.1)
    assert actor.state == "stopped"
