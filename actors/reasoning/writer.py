"""A chain's stream: step messages, the synthesis's chunks, one ending, numbered by one
`seq` and each stored exactly once, also by a coordinator that took the chain over.

A chain's stream is slow (a message per step change, the synthesis's chunks), so every
message waits for JetStream's ack, with a message id from the chain and the seq: sent
again, it is stored once. `open` reads what the stream holds already, so a coordinator
taking a chain over continues its numbering and sends nothing twice.
"""

from __future__ import annotations

import asyncio

import msgspec
from nats.js.errors import NotFoundError

from bus.connection import Connection
from bus.subjects import Subjects
from schemas import Chunk, Done, Error, StreamMessage, decode_stream, encode
from schemas.reasoning import Step, StepState

__all__ = ["ChainWriter"]

_ACK_TIMEOUT_S = 5.0


class ChainWriter:
    """Publishes one chain's stream."""

    def __init__(self, nc: Connection, subjects: Subjects, chain_id: str) -> None:
        self._js = nc.jetstream()
        self._stream = subjects.chunk_stream
        self._subject = subjects.stream(chain_id)
        self.chain_id = chain_id
        self.seq = 0
        # What the stream holds: step changes sent, synthesis chunks relayed, an ending.
        self._steps: set[tuple[str, StepState]] = set()
        self.relayed = 0
        self.ended = False
        self._sending = asyncio.Lock()

    async def open(self) -> None:
        """Read what the chain's stream holds already (a chain taken over)."""
        for message in await self._stored():
            self.seq = max(self.seq, message.seq or 0)
            match message:
                case Step():
                    self._steps.add((message.step_id, message.state))
                case Chunk():
                    self.relayed += 1
                case Done() | Error():
                    self.ended = True

    async def _stored(self) -> list[StreamMessage]:
        out: list[StreamMessage] = []
        at = 1
        while True:
            try:
                raw = await self._js.get_msg(self._stream, seq=at, subject=self._subject, next=True)
            except NotFoundError:
                return out
            assert raw.seq is not None and raw.data is not None
            out.append(decode_stream(raw.data))
            at = raw.seq + 1

    async def step(self, step: Step) -> None:
        """A step's change, unless the stream has it already."""
        if (step.step_id, step.state) in self._steps:
            return
        await self._publish(step)
        self._steps.add((step.step_id, step.state))

    async def chunk(self, chunk: Chunk) -> None:
        """One chunk of the synthesis, renumbered into the chain's stream."""
        await self._publish(msgspec.structs.replace(chunk, request_id=self.chain_id))
        self.relayed += 1

    async def end(self, message: Done | Error) -> None:
        """The chain's one ending."""
        if not self.ended:
            await self._publish(message)
            self.ended = True

    async def _publish(self, message: Step | Chunk | Done | Error) -> None:
        """Store `message` as the next seq: one at a time, so the stream holds them in
        order, and a seq is taken only once stored, so a failed send leaves no gap."""
        async with self._sending:
            message.seq = self.seq + 1
            headers = {"Nats-Msg-Id": f"{self.chain_id}.{message.seq}"}
            await self._js.publish(
                self._subject, encode(message), timeout=_ACK_TIMEOUT_S, headers=headers
            )
            self.seq = message.seq
