"""One HTTP exchange as the simulator's handlers see it, cancelled when the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
from starlette.types import Receive, Scope, Send

from actors.simulator.engine import Engine
from actors.simulator.generation import HostDied
from actors.simulator.wire import Refused

__all__ = ["ABORT", "Endpoint", "Exchange"]

# The key in `scope["extensions"]` of a callable that drops the request's connection at
# once. SimulatorServer provides it; without it a crash falls back to raising HostDied,
# which makes any ASGI server close the connection (and log the exception).
ABORT = "ollamesh.simulator.abort"

_JSON = [(b"content-type", b"application/json; charset=utf-8")]
_NDJSON = [(b"content-type", b"application/x-ndjson")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


class Exchange:
    """The request's body, and the ways to answer it: whole, as NDJSON lines, or by dying."""

    __slots__ = ("_send", "body", "scope", "started")

    def __init__(self, scope: Scope, body: bytes, send: Send) -> None:
        self.scope = scope
        self.body = body
        self._send = send
        self.started = False

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    async def reply(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """Send a whole response."""
        self.started = True
        length = (b"content-length", str(len(body)).encode())
        await self._send(
            {"type": "http.response.start", "status": status, "headers": [*headers, length]}
        )
        await self._send({"type": "http.response.body", "body": body})

    async def json(self, status: int, payload: object) -> None:
        await self.reply(status, msgspec.json.encode(payload), _JSON)

    async def text(self, status: int, text: str) -> None:
        await self.reply(status, text.encode(), _TEXT)

    async def error(self, status: int, message: str) -> None:
        """Answer in Ollama's error shape: `{"error": message}`."""
        await self.json(status, {"error": message})

    async def write(self, line: bytes, headers: list[tuple[bytes, bytes]] = _NDJSON) -> None:
        """Send one piece of a streamed body (an NDJSON line unless `headers` say otherwise),
        starting the stream with the first (as Ollama and llama-server do)."""
        if not self.started:
            self.started = True
            await self._send({"type": "http.response.start", "status": 200, "headers": headers})
        await self._send({"type": "http.response.body", "body": line, "more_body": True})

    async def end(self) -> None:
        """End the streamed body (an empty NDJSON one if nothing was sent)."""
        if not self.started:
            await self.write(b"")
        await self._send({"type": "http.response.body", "body": b""})

    async def die(self) -> None:
        """Drop the connection mid-answer, as a crashing host does; never returns."""
        abort = (self.scope.get("extensions") or {}).get(ABORT)
        if abort is None:
            raise HostDied("simulated crash")
        abort(self.scope)
        # The server sees the connection gone and the guard cancels this handler.
        await asyncio.Future()


Handler = Callable[[Exchange], Awaitable[None]]


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Endpoint:
    """An ASGI endpoint: read the body, count the request, run `handler`.

    A `guarded` handler runs in its own task, cancelled the moment the client
    disconnects, so a request waiting for a slot, stalled or mid-stream frees what it
    holds at once. A handler that raises `Refused` before answering gets Ollama's
    `{"error": ...}` reply with that status.
    """

    __slots__ = ("engine", "guarded", "handler")

    def __init__(self, handler: Handler, engine: Engine | None, *, guarded: bool = False) -> None:
        self.handler = handler
        self.engine = engine
        self.guarded = guarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.engine is not None:
            self.engine.stats.requests[scope["path"]] += 1
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        exchange = Exchange(scope, b"".join(chunks), send)
        if not self.guarded:
            await self._run(exchange)
            return
        work = asyncio.ensure_future(self._run(exchange))
        gone = asyncio.ensure_future(_until_disconnected(receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            work.cancel()
            gone.cancel()
            # Let the handler release its slot before the server forgets the request.
            await asyncio.wait((work, gone))
        if not work.cancelled() and (exc := work.exception()) is not None:
            raise exc

    async def _run(self, exchange: Exchange) -> None:
        try:
            await self.handler(exchange)
        except Refused as refusal:
            if exchange.started:
                raise
            await exchange.error(refusal.status, refusal.message)
