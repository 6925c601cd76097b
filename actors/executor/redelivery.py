"""What to do with work JetStream delivers again: serve it, leave it, or end it.

Work is delivered again when its ack did not arrive within the work queue's ack wait:
the executor serving it died (its keep-alives stopped), its ack was lost, or a
nats-server restart forgot the keep-alives. The executor that receives it must never
start the answer a second time under the same seq numbers, nor end a stream twice.
"""

from __future__ import annotations

import enum
import time

from nats.js import JetStreamContext

from actors.executor.emit import stored_last
from bus.board import Board
from schemas import Chunk

__all__ = ["Redelivery", "judge_redelivery"]

_RECHECK_S = 0.1


class Redelivery(enum.Enum):
    """The verdict on a redelivered work item."""

    # Nothing of it reached the stream: serve it from the start.
    FRESH = "fresh"
    # A live executor still serves it (a restart made the server forget its keep-alives).
    OWNED = "owned"
    # Its stream already ended (only the ack was lost): acknowledge it, send nothing.
    ENDED = "ended"
    # Tokens went out from an executor that is gone: end the stream with an error.
    BROKEN = "broken"


async def _owner_alive(board: Board, request_id: str, me: str) -> bool:
    """Whether some executor says, after the work came back, that it still serves it.

    An executor that handed the work back (a retry) says otherwise at once: its load
    changed. A live owner says so within a heartbeat; a dead one stops saying anything,
    and its entry goes stale. Waits first until the board has heard every live executor
    since it (re)connected.
    """
    since = time.monotonic()
    await board.settled()
    while (said_at := board.serving(request_id, besides=me)) is not None:
        if said_at > since:
            return True
        await board.changed(_RECHECK_S)
    return False


async def judge_redelivery(
    board: Board,
    js: JetStreamContext,
    *,
    stream: str,
    subject: str,
    request_id: str,
    published: bool,
    me: str,
) -> tuple[Redelivery, int]:
    """Judge work delivered again to executor `me`; `published`: its answer goes onto its
    stream subject. Returns the verdict and the seq of the last message stored there."""
    if await _owner_alive(board, request_id, me):
        return Redelivery.OWNED, 0
    if not published:
        return Redelivery.FRESH, 0
    last = await stored_last(js, stream, subject)
    if last is None:
        return Redelivery.FRESH, 0
    seq = last[1].seq or 0
    return (Redelivery.BROKEN if isinstance(last[1], Chunk) else Redelivery.ENDED), seq
