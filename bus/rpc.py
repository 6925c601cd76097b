"""One request/reply to an actor, with a typed exception for every way it can fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from bus.errors import BadRequest, Internal, Timeout, Unavailable, error_from_wire
from schemas import Error

__all__ = ["call", "decode_body"]

T = TypeVar("T")


async def call(
    nc: NATS,
    subject: str,
    data: bytes,
    decode: Callable[[bytes], T | Error],
    timeout: float,
    *,
    service: str,
    request_id: str | None = None,
) -> T:
    """Send `data` to `subject` and decode the answer; an `error` answer is raised typed.

    No `service` (the actor that should answer: "router", "prompt store", ...) serving the
    subject is `Unavailable`; no answer in time is `Timeout`; an answer that does not
    decode is `Internal`.
    """
    try:
        msg = await nc.request(subject, data, timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise Unavailable(f"no {service} is serving {subject}") from exc
    except nats.errors.TimeoutError as exc:
        raise Timeout(
            f"no answer on {subject} within {timeout:.0f}s", request_id=request_id
        ) from exc
    try:
        reply = decode(msg.data)
    except msgspec.DecodeError as exc:
        raise Internal(f"unreadable answer on {subject}: {exc}") from exc
    if isinstance(reply, Error):
        raise error_from_wire(reply)
    return reply


def decode_body(cls: type[T], data: bytes, what: str) -> T:
    """Decode a request's body (empty: `{}`) as `cls`; a bad one is `BadRequest`."""
    try:
        return msgspec.json.decode(data or b"{}", type=cls)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise BadRequest(f"invalid {what} request: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest(f"invalid {what} request: JSON is nested too deeply") from exc
