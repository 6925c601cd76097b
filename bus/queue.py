"""Putting work on a model's queue, with the failures typed (one path for every producer)."""

from __future__ import annotations

from typing import NamedTuple

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError
from nats.js.errors import Error as JetStreamError

from bus.errors import Overloaded, PayloadTooLarge, Unavailable
from bus.subjects import Subjects
from schemas import encode
from schemas.internal import Work

__all__ = ["QueueFull", "Queued", "enqueue"]

# JetStream's error code for "maximum messages per subject exceeded".
_PER_SUBJECT_LIMIT = 10077


class QueueFull(Overloaded):
    """The model's queue holds its bound of waiting work."""


class Queued(NamedTuple):
    """Where the work went: its sequence in the work stream, and whether it was there."""

    seq: int
    duplicate: bool


async def enqueue(
    js: JetStreamContext,
    subjects: Subjects,
    work: Work,
    *,
    max_payload: int,
    msg_id: str,
    timeout: float = 5.0,
) -> Queued:
    """Queue `work` durably on its model and priority.

    `msg_id` is the dedup key: the same id within the window is stored once.
    """
    payload = encode(work)
    if len(payload) > max_payload:
        raise PayloadTooLarge(
            f"request is too large to queue ({len(payload)} bytes with its envelope;"
            f" the server's limit is {max_payload})"
        )
    try:
        ack = await js.publish(
            subjects.work(work.model, work.priority),
            payload,
            timeout=timeout,
            headers={"Nats-Msg-Id": msg_id},
        )
    except APIError as exc:
        if exc.err_code == _PER_SUBJECT_LIMIT:
            raise QueueFull(f"the {work.priority} queue of {work.model!r} is full") from exc
        raise Unavailable(f"could not queue the request: {exc!r}") from exc
    except (nats.errors.Error, JetStreamError) as exc:
        raise Unavailable(f"could not queue the request: {exc!r}") from exc
    return Queued(ack.seq, bool(ack.duplicate))
