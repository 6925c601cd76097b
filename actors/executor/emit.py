"""Turn Ollama's lines into chunks on a request's stream: coalesced, ordered, first never held.

The stream must come out whole and once, across a nats-server restart too:

- a chunk is published only while the connection is up; while it is down the chunks
  wait here (not in nats-py's reconnect buffer, which would flush them blindly);
- after a reconnection `resync` reads what the stream stored for the request and sends
  what it lacks (chunks written into a dying connection are lost; ones nats-py still
  held are flushed on reconnection, so a lost chunk may be stored after later ones:
  readers put chunks back in `seq` order), each with the stream's last-sequence check
  so that nothing is stored twice;
- the terminal message (`done` or `error`) carries a message id, so sending it again
  (after a reconnection, should the first copy have been lost) stores it once;
- a stream that already holds a terminal this emitter did not send was ended by
  someone else (a retry elsewhere): the emitter is `superseded` and sends nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from actors.backends.ollama_api import Line
from bus.connection import Connection
from schemas import Chunk, Done, Error, StreamMessage, ToolCall, decode_stream, encode

__all__ = ["Emitter", "NotStored", "SoFar", "StreamEnded", "stored_last", "stored_messages"]

# JetStream's error code for "wrong last sequence" (Nats-Expected-Last-Subject-Sequence).
_WRONG_LAST = 10071
# The longest the terminal message waits for the connection (and the server's ack).
_TERMINAL_WITHIN_S = 60.0
_ACK_TIMEOUT_S = 5.0
# Between tries to store the terminal while the server is unreachable or answers late.
_RETRY_S = 0.2


@dataclass(frozen=True, slots=True)
class SoFar:
    """What a request's stream holds of its answer: chunks 1..`seq`."""

    seq: int
    text: str = ""
    thinking: str = ""
    tokens: int = 0  # the host's tokens in them


class StreamEnded(Exception):
    """The request's stream was ended by someone else: send nothing more."""


class NotStored(Exception):
    """The stream's terminal message could not be stored in time (NATS unreachable)."""


async def stored_last(
    js: JetStreamContext, stream: str, subject: str
) -> tuple[int, StreamMessage] | None:
    """The last message the stream stored on `subject` (stream sequence, message)."""
    try:
        raw = await js.get_last_msg(stream, subject)
    except NotFoundError:
        return None
    assert raw.seq is not None and raw.data is not None
    return raw.seq, decode_stream(raw.data)


async def stored_messages(
    js: JetStreamContext, stream: str, subject: str
) -> AsyncIterator[StreamMessage]:
    """Every message the stream holds on `subject`, in the order stored (one by one)."""
    at = 1
    while True:
        try:
            raw = await js.get_msg(stream, seq=at, subject=subject, next=True)
        except NotFoundError:
            return
        assert raw.seq is not None and raw.data is not None
        yield decode_stream(raw.data)
        at = raw.seq + 1


class Emitter:
    """Publish the tokens of one request, and remember the whole answer.

    The first token goes out at once. Later tokens that arrive within `window_s` of the
    previous chunk wait for the window to close and leave together as one chunk, which
    keeps a 100-tokens-per-second stream from costing 100 messages per second when the
    bus is busy, without holding any token longer than the window. With `publish=False`
    (a non-streamed request) nothing is sent; the answer is only collected.
    """

    def __init__(
        self,
        nc: Connection,
        js: JetStreamContext,
        stream: str,
        subject: str,
        request_id: str,
        *,
        window_s: float,
        publish: bool,
    ) -> None:
        self._nc = nc
        self._js = js
        self._stream = stream
        self._subject = subject
        self.request_id = request_id
        self._window = window_s
        self._publish = publish
        self._loop = asyncio.get_running_loop()
        self.seq = 0
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list[ToolCall] = []
        # The host's tokens (lines that carried any), with those before it went on.
        self.tokens = 0
        # The answer another executor stored before this emitter went on from it.
        self.so_far: SoFar | None = None
        self.first_token_at: float | None = None
        self.superseded = False
        self._pending_text: list[str] = []
        self._pending_thinking: list[str] = []
        self._pending_tools: list[ToolCall] = []
        self._pending_tokens = 0
        # Every chunk sent, encoded (index seq - 1), and how many left this process.
        self._chunks: list[bytes] = []
        self._sent = 0
        # One sender at a time: the coalescing timer, the token loop, `resync`.
        self._sending_lock = asyncio.Lock()
        self._terminal: bytes | None = None
        self._end = {"Nats-Msg-Id": f"{request_id}.end"}
        self._last_sent = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None

    @property
    def publishing(self) -> bool:
        """Whether the request's stream subject carries this answer."""
        return self._publish

    @property
    def started(self) -> bool:
        """Whether this emitter sent a token (so the work can no longer be served again
        from where it was delivered)."""
        return self.seq > (self.so_far.seq if self.so_far else 0)

    def continue_after(self, so_far: SoFar) -> None:
        """Number what this emitter sends after the chunks stored before it; what they
        hold is part of the whole answer."""
        self.so_far = so_far
        self.seq = self._sent = so_far.seq
        self._chunks = [b""] * so_far.seq  # never sent again: the stream holds them
        self.text = [so_far.text] if so_far.text else []
        self.thinking = [so_far.thinking] if so_far.thinking else []
        self.tokens = so_far.tokens

    async def add(self, lines: list[Line]) -> None:
        """Take the lines of one read from the host."""
        if self.superseded:
            raise StreamEnded(self.request_id)
        for line in lines:
            text, thinking = line.response, line.thinking
            if line.message is not None:
                text, thinking = line.message.content, line.message.thinking
                if line.message.tool_calls:
                    self.tool_calls.extend(line.message.tool_calls)
                    self._pending_tools.extend(line.message.tool_calls)
            if text:
                self.text.append(text)
                self._pending_text.append(text)
            if thinking:
                self.thinking.append(thinking)
                self._pending_thinking.append(thinking)
            if text or thinking:
                self.tokens += 1
                self._pending_tokens += 1
        if self.first_token_at is None and (self.text or self.thinking or self.tool_calls):
            self.first_token_at = self._loop.time()
        if not self._publish or not self._has_pending():
            return
        if self._loop.time() - self._last_sent >= self._window:
            await self._send_now()
        elif self._timer is None:
            self._timer = self._loop.call_at(self._last_sent + self._window, self._on_timer)

    def _has_pending(self) -> bool:
        return bool(self._pending_text or self._pending_thinking or self._pending_tools)

    def _take_chunk(self) -> None:
        """Move the pending tokens into the next chunk (synchronously, so seq stays ordered)."""
        self.seq += 1
        chunk = Chunk(
            request_id=self.request_id,
            seq=self.seq,
            text="".join(self._pending_text),
            thinking="".join(self._pending_thinking) or None,
            tool_calls=self._pending_tools or None,
            tokens=self._pending_tokens,
        )
        self._pending_text, self._pending_thinking, self._pending_tools = [], [], []
        self._pending_tokens = 0
        self._last_sent = self._loop.time()
        self._chunks.append(encode(chunk))

    def _on_timer(self) -> None:
        self._timer = None
        if self._has_pending():
            self._take_chunk()
            self._sending = self._loop.create_task(self._send())

    async def _send(self) -> None:
        """Publish the chunks not sent yet, unless the connection is down (then `resync`
        sends them once it is back)."""
        async with self._sending_lock:
            while self._sent < len(self._chunks) and self._nc.is_connected:
                try:
                    await self._nc.publish(self._subject, self._chunks[self._sent])
                except (
                    nats.errors.ConnectionReconnectingError,
                    nats.errors.OutboundBufferLimitError,
                ):
                    return  # went down meanwhile: kept for `resync`
                self._sent += 1

    async def _settle(self) -> None:
        """Wait for a chunk the timer is sending, so nothing overtakes it."""
        if self._sending is not None:
            sending, self._sending = self._sending, None
            await sending

    async def _send_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._settle()
        if self._has_pending():
            self._take_chunk()
        await self._send()

    async def flush(self) -> None:
        """Send whatever is pending now (before `done` or `error`)."""
        if self._publish:
            await self._send_now()

    async def resync(self) -> bool:
        """After a reconnection: send what the stored stream lacks (chunks, and the
        ending of a finished emitter). Returns whether the stream holds its ending.

        Raises `StreamEnded` (and marks the emitter superseded) if the stream holds an
        ending this emitter did not send.
        """
        if not self._publish:
            return False
        async with self._sending_lock:
            while True:
                missing, stream_seq, ended = await self._missing()
                try:
                    # Each with the stream's last-sequence check: a chunk still in flight
                    # from before the outage and stored meanwhile makes this one fail,
                    # and the stored stream is read again rather than added to twice.
                    for seq in missing:
                        headers = {"Nats-Expected-Last-Subject-Sequence": str(stream_seq)}
                        ack = await self._js.publish(
                            self._subject,
                            self._chunks[seq - 1],
                            timeout=_ACK_TIMEOUT_S,
                            headers=headers,
                        )
                        stream_seq = ack.seq
                except APIError as exc:
                    if exc.err_code != _WRONG_LAST:
                        raise
                    continue
                self._sent = len(self._chunks)
                if ended or self._terminal is None:
                    return ended
                # Finished, its ending lost: stored now, once (its message id).
                await self._js.publish(
                    self._subject, self._terminal, timeout=_ACK_TIMEOUT_S, headers=self._end
                )
                return True

    async def _missing(self) -> tuple[list[int], int, bool]:
        """The chunk numbers the stored stream lacks, the stream sequence of its last
        message on the subject, and whether it holds this emitter's ending."""
        last = await stored_last(self._js, self._stream, self._subject)
        if last is None:
            return list(range(1, len(self._chunks) + 1)), 0, False
        stream_seq, message = last
        ended = not isinstance(message, Chunk)
        if ended and (self._terminal is None or message.seq != self.seq + 1):
            self.superseded = True
            raise StreamEnded(self.request_id)
        info = await self._js.stream_info(self._stream, subjects_filter=self._subject)
        count = (info.state.subjects or {}).get(self._subject, 0)
        stored = set(range(1, count + 1))
        if count != message.seq:  # a gap: chunks lost in flight, later ones stored
            stored = {
                m.seq or 0 async for m in stored_messages(self._js, self._stream, self._subject)
            }
        missing = [seq for seq in range(1, len(self._chunks) + 1) if seq not in stored]
        return missing, stream_seq, ended

    async def finish(self, message: Done | Error) -> None:
        """Send the stream's last message after every chunk, numbered after them.

        Connected and caught up, it goes out at once, with no round trip: should the
        server die before storing it, `resync` after the reconnection stores it (the
        executor keeps finished emitters a while). Otherwise it waits for the
        connection and `resync`. Raises `StreamEnded` if someone else ended the stream
        first, and `NotStored` if the server could not be reached in time.
        """
        await self.flush()
        await self._settle()
        message.seq = self.seq + 1
        self._terminal = encode(message)
        if self._sent == len(self._chunks) and self._nc.is_connected:
            with contextlib.suppress(
                nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError
            ):
                await self._nc.publish(self._subject, self._terminal, headers=self._end)
                return
        try:
            async with asyncio.timeout(_TERMINAL_WITHIN_S):
                while True:
                    if await self._resynced():
                        return
                    await asyncio.sleep(_RETRY_S)  # the server answered late, or went again
        except TimeoutError as exc:
            raise NotStored(self.request_id) from exc

    async def _resynced(self) -> bool:
        """Wait for the connection, then `resync`; False if that failed (try again)."""
        await self._nc.wait_connected(_TERMINAL_WITHIN_S)
        try:
            return await self.resync()
        except (nats.errors.Error, TimeoutError):
            return False

    def close(self) -> None:
        """Send no more chunks on a timer (the request ended). A send already under way
        is left to finish: cancelling it would leave `finish` awaiting a cancelled task."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
