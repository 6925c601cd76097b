"""Work delivered again: left to a live owner, served afresh, or ended once."""

from __future__ import annotations

import asyncio
import time

import pytest

from actors.executor.redelivery import Redelivery, judge_redelivery
from bus.board import Board
from bus.connection import NATS
from bus.provision import stream_configs
from bus.subjects import Subjects
from schemas import Chunk, Done, encode
from schemas.internal import HostLoad, ModelLoad
from tests.conftest import make_config

ME = "executor-me"
OTHER = "executor-other"
RID = "r1"


@pytest.fixture
async def board(nc: NATS, prefix: str):
    """A started board (settled at once) and the chunk stream of this test's prefix."""
    subjects = Subjects(prefix)
    js = nc.jetstream()
    chunks = stream_configs(subjects, make_config("", prefix, []))[0]
    await js.add_stream(chunks)
    board = Board(nc, subjects)
    await board.start()
    board._since = time.monotonic() - 10  # listening for long: every live executor heard
    yield board
    await board.stop()
    await js.delete_stream(chunks.name)


def _load(executor: str, serving: list[str]) -> HostLoad:
    return HostLoad(
        executor=executor, host="h", models={"m": ModelLoad(slots=1)}, serving=serving, at=0.0
    )


async def _judge(board: Board, nc: NATS, prefix: str, *, published: bool = True) -> Redelivery:
    subjects = Subjects(prefix)
    verdict, _ = await judge_redelivery(
        board,
        nc.jetstream(),
        stream=subjects.chunk_stream,
        subject=subjects.stream(RID),
        request_id=RID,
        published=published,
        me=ME,
    )
    return verdict


async def test_a_live_owner_keeps_its_work(board: Board, nc: NATS, prefix: str) -> None:
    """Another executor that says, after the work came back, that it serves it: leave it."""
    board.put(_load(OTHER, [RID]))
    judging = asyncio.create_task(_judge(board, nc, prefix))
    await asyncio.sleep(0)  # the judge starts waiting; the owner speaks after the redelivery
    await board.publish(_load(OTHER, [RID]))
    assert await judging is Redelivery.OWNED


async def test_work_handed_back_is_served_afresh(board: Board, nc: NATS, prefix: str) -> None:
    """The previous owner's next entry no longer lists it (a retry): serve it."""
    board.put(_load(OTHER, [RID]))
    judging = asyncio.create_task(_judge(board, nc, prefix))
    await asyncio.sleep(0)  # the judge sees the old entry first
    await board.publish(_load(OTHER, []))
    assert await judging is Redelivery.FRESH


async def test_my_own_entry_is_not_an_owner(board: Board, nc: NATS, prefix: str) -> None:
    """The executor judging lists the work itself (it just took it): not someone else's."""
    board.put(_load(ME, [RID]))
    assert await _judge(board, nc, prefix) is Redelivery.FRESH


async def test_a_dead_owner_with_tokens_out_is_broken(board: Board, nc: NATS, prefix: str) -> None:
    """An owner that stops publishing goes stale; the tokens it sent mean no restart."""
    subjects = Subjects(prefix)
    chunk = Chunk(request_id=RID, seq=1, text="half")
    await nc.jetstream().publish(subjects.stream(RID), encode(chunk))
    board.put(_load(OTHER, [RID]))
    assert await asyncio.wait_for(_judge(board, nc, prefix), 10) is Redelivery.BROKEN


async def test_a_stream_that_ended_is_only_acknowledged(
    board: Board, nc: NATS, prefix: str
) -> None:
    """Only the ack was lost: nothing is sent again."""
    js = nc.jetstream()
    subject = Subjects(prefix).stream(RID)
    await js.publish(subject, encode(Chunk(request_id=RID, seq=1, text="all")))
    await js.publish(subject, encode(Done(request_id=RID, seq=2, model="m", host="h")))
    assert await _judge(board, nc, prefix) is Redelivery.ENDED
    assert await _judge(board, nc, prefix, published=False) is Redelivery.FRESH
