"""Turn Ollama's lines into chunks on a request's stream: coalesced, ordered, first never held."""

from __future__ import annotations

import asyncio
import math

from nats.aio.client import Client as NATS

from actors.executor.ollama import Line
from schemas import Chunk, Done, Error, ToolCall, encode

__all__ = ["Emitter"]


class Emitter:
    """Publish the tokens of one request, and remember the whole answer.

    The first token goes out at once. Later tokens that arrive within `window_s` of the
    previous chunk wait for the window to close and leave together as one chunk, which
    keeps a 100-tokens-per-second stream from costing 100 messages per second when the
    bus is busy, without holding any token longer than the window. With `publish=False`
    (a non-streamed request) nothing is sent; the answer is only collected.
    """

    def __init__(
        self, nc: NATS, subject: str, request_id: str, *, window_s: float, publish: bool
    ) -> None:
        self._nc = nc
        self._subject = subject
        self._request_id = request_id
        self._window = window_s
        self._publish = publish
        self._loop = asyncio.get_running_loop()
        self.seq = 0
        self.text: list[str] = []
        self.thinking: list[str] = []
        self.tool_calls: list[ToolCall] = []
        self.first_token_at: float | None = None
        self._pending_text: list[str] = []
        self._pending_thinking: list[str] = []
        self._pending_tools: list[ToolCall] = []
        self._last_sent = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None

    @property
    def publishing(self) -> bool:
        """Whether the request's stream subject carries this answer."""
        return self._publish

    @property
    def started(self) -> bool:
        """Whether any token has reached the client (so the work can no longer move)."""
        return self.seq > 0

    async def add(self, lines: list[Line]) -> None:
        """Take the lines of one read from the host."""
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

    def _take_chunk(self) -> bytes:
        """Move the pending tokens into the next chunk (synchronously, so seq stays ordered)."""
        self.seq += 1
        chunk = Chunk(
            request_id=self._request_id,
            seq=self.seq,
            text="".join(self._pending_text),
            thinking="".join(self._pending_thinking) or None,
            tool_calls=self._pending_tools or None,
        )
        self._pending_text, self._pending_thinking, self._pending_tools = [], [], []
        self._last_sent = self._loop.time()
        return encode(chunk)

    def _on_timer(self) -> None:
        self._timer = None
        if self._has_pending():
            self._sending = self._loop.create_task(self._send(self._take_chunk()))

    async def _send(self, data: bytes) -> None:
        await self._nc.publish(self._subject, data)

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
            await self._send(self._take_chunk())

    async def flush(self) -> None:
        """Send whatever is pending now (before `done` or `error`)."""
        if self._publish:
            await self._send_now()

    async def finish(self, message: Done | Error) -> None:
        """Send the stream's last message after every pending chunk, numbered after them."""
        await self.flush()
        await self._settle()
        message.seq = self.seq + 1
        await self._send(encode(message))

    def close(self) -> None:
        """Forget pending work (the request was abandoned)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sending is not None:
            self._sending.cancel()
