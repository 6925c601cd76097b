"""Answers a request gets without a host generating them for it: cache hits, and the
generation of an identical request already running (single-flight).

Either way the client sees what a host's answer looks like (chunks then `done`, or one
result), marked `cached: true`, and a request event with `cached: true` is emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.js.api import DeliverPolicy

from actors.router.cache import AnswerCache
from bus.connection import Connection, next_message
from bus.errors import OllameshError, Timeout, error_from_wire
from bus.subjects import Subjects
from schemas import Accepted, Chunk, Done, Error, Kind, decode_stream, encode
from schemas.answers import STAT_FIELDS, done_of, result_of
from schemas.internal import Answer, RequestEvent

__all__ = ["Generate", "SharedAnswers", "Ticket"]


class Generate(enum.Enum):
    """How a cacheable request that nothing answered yet is to be generated."""

    # It generates, and identical requests arriving meanwhile follow it.
    LEAD = "lead"
    # It generates on its own, neither following nor followed: an embed, whose vectors a
    # stream does not carry, cannot be replayed from the leading request's stream.
    ALONE = "alone"
    # It is the leading request itself, sent again (the same `request_id`): queued again,
    # it is a duplicate there (the same stream, or a reused id refused), and it must not
    # follow itself nor, refused, end the stream of its first copy.
    AGAIN = "again"


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted request, as far as delivering it is concerned."""

    kind: Kind
    request_id: str
    model: str
    stream: bool
    started: float
    template: str | None = None


class SharedAnswers:
    """Serves a router's requests from the cache or from an identical one in flight."""

    def __init__(
        self,
        nc: Connection,
        subjects: Subjects,
        cache: AnswerCache,
        *,
        limit_s: float,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._subjects = subjects
        self._cache = cache
        self._limit_s = limit_s
        self._spawn = spawn

    async def answer(self, key: str, ticket: Ticket) -> bytes | Generate:
        """The reply for a cacheable request answered without generating it, or how it
        is to be generated."""
        claim = await self._cache.claim(key, ticket.request_id)
        if claim is None:
            return Generate.LEAD
        if isinstance(claim, Answer):
            return await self._from_cache(ticket, claim)
        leader = claim
        if leader == ticket.request_id:
            return Generate.AGAIN
        if ticket.kind is Kind.EMBED:
            return Generate.ALONE
        relay = self._relay(ticket, leader, key)
        if not ticket.stream:
            return await relay
        self._spawn(relay)
        subject = self._subjects.stream(ticket.request_id)
        return encode(Accepted(request_id=ticket.request_id, model=ticket.model, stream=subject))

    async def abandon(self, key: str, ticket: Ticket, failure: OllameshError) -> None:
        """The leading request failed before any host took it: release the claim and end
        its stream with the error, so the requests following it end too."""
        await self._cache.release(key)
        subject = self._subjects.stream(ticket.request_id)
        await self._nc.publish(subject, encode(failure.to_wire(ticket.request_id)))

    async def _from_cache(self, ticket: Ticket, answer: Answer) -> bytes:
        """Serve a cached answer the way a host's would arrive: chunks then `done`, or
        one result."""
        rid = ticket.request_id
        subject = self._subjects.stream(rid)
        if ticket.stream:
            seq = 0
            if answer.text or answer.thinking or answer.tool_calls:
                seq = 1
                chunk = Chunk(
                    request_id=rid,
                    seq=seq,
                    text=answer.text,
                    thinking=answer.thinking,
                    tool_calls=answer.tool_calls,
                )
                await self._nc.publish(subject, encode(chunk))
            done = done_of(answer, rid, cached=True)
            done.seq = seq + 1
            await self._nc.publish(subject, encode(done))
            reply = encode(Accepted(request_id=rid, model=answer.model, stream=subject))
        else:
            reply = encode(result_of(answer, rid, cached=True))
        await self._event(ticket, answer)
        return reply

    async def _relay(self, ticket: Ticket, leader: str, key: str) -> bytes:
        """Replay the stream of request `leader` under this request's id, live, as a
        stream or into one result."""
        rid = ticket.request_id
        own = self._subjects.stream(rid)
        sub = await self._js.subscribe(
            self._subjects.stream(leader),
            stream=self._subjects.chunk_stream,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        parts: dict[int, Chunk] = {}  # by seq: a chunk lost in a restart comes late
        last: Done | Error
        try:
            async with asyncio.timeout(self._limit_s):
                while True:
                    message = decode_stream((await next_message(sub, self._limit_s)).data)
                    message.request_id = rid
                    if isinstance(message, Done):
                        message.cached = True  # no host generated it for this request
                    if ticket.stream:
                        await self._nc.publish(own, encode(message))
                    if not isinstance(message, Chunk):
                        last = message
                        break
                    parts[message.seq] = message
        except TimeoutError:
            last = Timeout("the identical request this one follows did not finish").to_wire(rid)
            if ticket.stream:
                await self._nc.publish(own, encode(last))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if isinstance(last, Error):
            await self._cache.release(key)  # the next identical request generates anew
            if not ticket.stream:
                raise error_from_wire(last)
            return b""
        chunks = [parts[seq] for seq in sorted(parts)]
        answer = Answer(
            kind=ticket.kind,
            model=last.model,
            host=last.host,
            text="".join(c.text for c in chunks),
            thinking="".join(c.thinking or "" for c in chunks) or None,
            tool_calls=[t for c in chunks for t in c.tool_calls or []] or None,
            fallback_from=last.fallback_from,
            **{name: getattr(last, name) for name in STAT_FIELDS},
        )
        await self._event(ticket, answer)
        return encode(result_of(answer, rid, cached=True))

    async def _event(self, ticket: Ticket, answer: Answer) -> None:
        """The request event of an answer no host had to generate for this request."""
        latency_ms = round((time.time() - ticket.started) * 1000, 3)
        event = RequestEvent(
            request_id=ticket.request_id,
            kind=ticket.kind,
            model=answer.model,
            host=answer.host,
            latency_ms=latency_ms,
            ttft_ms=latency_ms,
            prompt_tokens=answer.prompt_eval_count,
            output_tokens=answer.eval_count,
            cached=True,
            fallback_from=answer.fallback_from,
            template=ticket.template,
            at=time.time(),
        )
        # Sent again after a reconnection; no message id (one header less on the fastest
        # path): the recorder takes an identical event twice as one row.
        await self._nc.publish_once(self._subjects.event("request"), encode(event), msg_id=None)
