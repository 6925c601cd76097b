"""The SDK's reasoning calls: start a chain (streamed or whole), read stored chains."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping

import msgspec
from nats.aio.client import Client as NATS

from bus.errors import BadRequest, Internal
from bus.rpc import call
from bus.stream import ChainStream, Inbox, listen
from bus.subjects import Subjects
from schemas import Accepted, Error, Options, Priority, ReasonResult, encode
from schemas.reasoning import Chain, Chains, ChainSummary, ReasonGet, ReasonList, ReasonRequest

__all__ = ["Reasoning"]

_decode_started = msgspec.json.Decoder(Accepted | ReasonResult | Error).decode
_decode_chain = msgspec.json.Decoder(Chain | Error).decode
_decode_chains = msgspec.json.Decoder(Chains | Error).decode
_SERVICE = "reasoning coordinator"
# Reading a stored chain answers within this.
_READ_TIMEOUT_S = 30.0

OpenStream = Callable[[Inbox, str], ChainStream]


class Reasoning:
    """Chains on the fleet, through the reasoning coordinators (`client.reason`)."""

    def __init__(
        self, nc: NATS, subjects: Subjects, timeout: float, open_stream: OpenStream
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = timeout
        self._open_stream = open_stream

    async def reason(
        self,
        query: str,
        *,
        stream: bool = True,
        chain_id: str | None = None,
        roles: Mapping[str, str] | None = None,
        max_steps: int = 8,
        options: Options | None = None,
        deadline_ms: int | None = None,
        priority: Priority | str = Priority.INTERACTIVE,
        language: str = "en",
    ) -> ChainStream | ReasonResult:
        """Answer `query` through a chain of steps: its stream of steps and chunks, or
        (`stream=False`) its whole result."""
        try:
            request = msgspec.convert(
                {
                    "query": query, "request_id": chain_id or uuid.uuid4().hex[:32],
                    "roles": dict(roles) if roles else None, "max_steps": max_steps,
                    "options": options, "deadline_ms": deadline_ms, "priority": priority,
                    "stream": stream, "language": language,
                },
                ReasonRequest,
                from_attributes=True,
            )  # fmt: skip
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid reason request: {exc}") from exc
        assert request.request_id is not None
        timeout = (
            self._timeout if deadline_ms is None else min(self._timeout, deadline_ms / 1000 + 5)
        )
        if not stream:
            reply = await self._send(request, timeout)
            if not isinstance(reply, ReasonResult):
                raise Internal(f"expected the chain's result, got {type(reply).__name__}")
            return reply
        # Subscribe first: not even the first step can be missed.
        inbox = await listen(self._nc, self._subjects.stream(request.request_id))
        try:
            reply = await self._send(request, timeout)
        except BaseException:
            await inbox.close()
            raise
        if not isinstance(reply, Accepted):
            await inbox.close()
            raise Internal(f"expected `accepted`, got {type(reply).__name__}")
        return self._open_stream(inbox, request.request_id)

    async def _send(self, request: ReasonRequest, timeout: float) -> Accepted | ReasonResult:
        return await call(
            self._nc, self._subjects.reason, encode(request), _decode_started, timeout,
            service=_SERVICE, request_id=request.request_id,
        )  # fmt: skip

    async def chain(self, chain_id: str) -> Chain:
        """A stored chain, with its steps and answer (or error)."""
        body = encode(ReasonGet(chain_id=chain_id))
        subject = self._subjects.reasoning("get")
        return await call(self._nc, subject, body, _decode_chain, _READ_TIMEOUT_S, service=_SERVICE)

    async def chains(self, limit: int = 20) -> list[ChainSummary]:
        """The latest chains, newest first."""
        body = encode(ReasonList(limit=limit))
        subject = self._subjects.reasoning("list")
        reply: Chains = await call(
            self._nc, subject, body, _decode_chains, _READ_TIMEOUT_S, service=_SERVICE
        )
        return reply.chains
