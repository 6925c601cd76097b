"""What both route families do with a request before it goes to the fleet, and after.

Before: the request id (`X-Request-Id`, or one made up), the priority and deadline a
client may give as headers (`X-Ollamesh-Priority: batch`, `X-Ollamesh-Deadline-Ms:
5000`) for clients that cannot add ollamesh's fields to a body, and the API key's
allowed models. After: the tokens the answer used, settled against the key's limit.
"""

from __future__ import annotations

from collections.abc import Callable

from actors.gateway.http import Request
from bus.client import ChunkStream, Client
from bus.errors import BadRequest, ModelNotFound, quote
from schemas import Priority, Result
from schemas import Request as FleetRequest
from schemas.replies import Stats

__all__ = ["DEADLINE_HEADER", "PRIORITY_HEADER", "prepare", "send", "used"]

PRIORITY_HEADER = b"x-ollamesh-priority"
DEADLINE_HEADER = b"x-ollamesh-deadline-ms"
_DEADLINE_MAX_MS = 24 * 3600 * 1000


def prepare(req: Request, request: FleetRequest) -> None:
    """Give `request` the HTTP request's id, priority and deadline; refuse a model the
    key may not use. Headers win over the body's fields."""
    request.request_id = request.request_id or req.request_id
    if (priority := req.headers.get(PRIORITY_HEADER)) is not None:
        text = priority.decode("latin-1").strip().lower()
        try:
            request.priority = Priority(text)
        except ValueError:
            raise BadRequest(
                f"X-Ollamesh-Priority is interactive or batch, not {quote(text)}"
            ) from None
    if (deadline := req.headers.get(DEADLINE_HEADER)) is not None:
        text = deadline.decode("latin-1").strip()
        if not text.isdigit() or not 0 < int(text) <= _DEADLINE_MAX_MS:
            raise BadRequest(
                f"X-Ollamesh-Deadline-Ms is milliseconds from 1 to {_DEADLINE_MAX_MS}, "
                f"not {quote(text)}"
            )
        request.deadline_ms = int(text)
    req.allow(request.model or request.role)


def used(stats: Stats | None) -> int:
    """The tokens an answer used: its prompt's and its output's."""
    return 0 if stats is None else stats.prompt_eval_count + stats.eval_count


async def send(
    client: Client, req: Request, request: FleetRequest, missing: Callable[[str | None], str]
) -> Result | ChunkStream:
    """`request` prepared and sent; a model the fleet lacks in the family's words
    (`missing(model)`); a whole answer's tokens settled (a stream's, at its end)."""
    prepare(req, request)
    try:
        sent = await client.send(request)
    except ModelNotFound as exc:
        raise ModelNotFound(missing(request.model)) from exc
    if not isinstance(sent, ChunkStream):
        await req.spent(used(sent))
    return sent
