"""A thin ASGI app: routes by method and path, bodies read within a bound, answers whole
or streamed; a client that goes away mid-stream has its request cancelled on the fleet.
An optional guard admits each request (API keys) before its body is read.

Thin on purpose: the streaming hot path is a dictionary lookup, one body read and the
chunks' writes, without a framework's middleware stack in between.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import structlog
from starlette.types import Message, Receive, Scope, Send

from actors.gateway.errors import BodyTimeout, Forbidden, MethodNotAllowed, RouteNotFound
from bus.errors import BadRequest, Internal, OllameshError, PayloadTooLarge

__all__ = [
    "App", "Family", "Grant", "Guard", "HttpMetrics", "Reply", "Request", "Stream", "json_reply",
]  # fmt: skip

log = structlog.get_logger("actors.gateway")
_encode = msgspec.json.Encoder().encode
_REQUEST_ID = b"x-request-id"
# How long a cancel of an abandoned request may take to go out.
_CANCEL_S = 2.0


class Grant(Protocol):
    """What the guard let a request do (its API key's rights and limits)."""

    def allow(self, model: str | None) -> None: ...

    async def spent(self, tokens: int) -> None: ...


@dataclass
class Request:
    method: str
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    request_id: str
    # The client's address ("" when the server does not say).
    client: str = ""
    # What the guard granted (None: no guard, or no keys, so nothing is restricted).
    grant: Grant | None = None

    def allow(self, model: str | None) -> None:
        """Raise `Forbidden` if the request's key may not use `model` (None: the fleet
        chooses, which a key limited to some models may not leave to it)."""
        if self.grant is not None:
            self.grant.allow(model)

    def may_use(self, model: str) -> bool:
        """Whether the request's key may use `model` (what model lists show it)."""
        try:
            self.allow(model)
        except Forbidden:
            return False
        return True

    async def spent(self, tokens: int) -> None:
        """Settle the key's tokens per minute with what the answer really used (prompt and
        output tokens); its estimate was charged at admission. Never raises."""
        if self.grant is not None:
            await self.grant.spent(tokens)


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Cancellable(Protocol):
    request_id: str

    async def cancel(self) -> None: ...

    async def aclose(self) -> None: ...


@dataclass
class Stream:
    """A streamed answer: `lines` written as they come; `on_close` is cancelled on the
    fleet if the client goes away before the end."""

    status: int
    lines: AsyncIterator[bytes]
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)
    on_close: Cancellable | None = None


def json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, _encode(body), {"content-type": "application/json; charset=utf-8",
                                         **(headers or {})})  # fmt: skip


class HttpMetrics(Protocol):
    """Where the app counts its requests: by route pattern, method and status."""

    def http_begin(self, route: str) -> None: ...

    def http_answered(self, route: str, method: str, status: int, seconds: float) -> None: ...

    def http_end(self, route: str) -> None: ...


Handler = Callable[[Request], Awaitable[Reply | Stream]]
ErrorReply = Callable[[OllameshError], Reply]
# Admits a request before its handler runs and before its body is read (`body` is b""
# then): whether the route is an admin one is the second argument. Raises the refusal
# (Unauthorized, Forbidden, RateLimited, Unavailable), answered in the family's shape.
Guard = Callable[[Request, bool], Awaitable[Grant | None]]


@dataclass(frozen=True)
class Family:
    """Routes that answer errors in one shape (Ollama's, OpenAI's). A path under `prefix`
    that no route serves is answered in this family's shape too. A route's path ending in
    `/*` serves every path under it (`/v1/models/*`: the handler reads the rest)."""

    prefix: str
    routes: dict[tuple[str, str], Handler]
    error: ErrorReply
    # Routes (keys of `routes`) only an admin key may use: pulling, deleting models.
    admin: frozenset[tuple[str, str]] = frozenset()


class App:
    """The ASGI callable: each family's routes by (method, path), errors in its shape."""

    def __init__(
        self,
        families: list[Family],
        max_body: int,
        *,
        body_timeout: float = 30.0,
        guard: Guard | None = None,
        metrics: HttpMetrics | None = None,
    ) -> None:
        self._routes = {(method, path): (handler, f, path) for f in families
                        for (method, path), handler in f.routes.items()}  # fmt: skip
        self._paths = {path for _, path in self._routes}
        self._under = [(method, path[:-1], route) for (method, path), route in
                       self._routes.items() if path.endswith("/*")]  # fmt: skip
        # Longest prefix first: `/v1/` before `/`.
        self._families = sorted(families, key=lambda f: len(f.prefix), reverse=True)
        self._max_body = max_body
        self._body_timeout = body_timeout
        self._guard = guard
        self._metrics = metrics

    def _route(self, method: str, path: str) -> tuple[Handler, Family, str] | None:
        found = self._routes.get((method, path))
        if found is None and self._under:
            found = next((r for m, p, r in self._under if m == method and
                          path.startswith(p) and len(path) > len(p)), None)  # fmt: skip
        return found

    def _family(self, path: str) -> Family:
        return next(f for f in self._families if path.startswith(f.prefix))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        found = self._route(method, path)
        family = found[1] if found is not None else self._family(path)
        if self._metrics is None:
            await self._answer(scope, receive, send, found, family)
            return
        # The route's pattern, not the path: a label's values must stay few.
        route, metrics = (found[2] if found is not None else "unmatched"), self._metrics
        started = time.perf_counter()

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                seconds = time.perf_counter() - started
                metrics.http_answered(route, method, message["status"], seconds)
            await send(message)

        metrics.http_begin(route)
        try:
            await self._answer(scope, receive, observed, found, family)
        finally:
            metrics.http_end(route)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        found: tuple[Handler, Family, str] | None,
        family: Family,
    ) -> None:
        method, path = scope["method"], scope["path"]
        headers = dict(scope["headers"])
        rid = headers.get(_REQUEST_ID, b"").decode("latin-1") or uuid.uuid4().hex
        try:
            if found is None:
                if path in self._paths or any(path.startswith(p) for _, p, _ in self._under):
                    raise MethodNotAllowed(f"{method} is not allowed on {path}")
                raise RouteNotFound(f"no route {method} {path}")
            peer = scope.get("client")
            req = Request(method, path, headers, b"", rid, client=peer[0] if peer else "")
            if self._guard is not None:  # before the body: a refused client sends none
                req.grant = await self._guard(req, _admin(family, method, path))
            req.body = await self._body(receive, headers)
            answer = await found[0](req)
        except OllameshError as exc:
            await _send(send, family.error(exc))
            return
        except Exception:  # a bug here: the client gets a 500 in its shape, the log the rest
            log.exception("route_failed", method=method, path=path, request_id=rid)
            await _send(send, family.error(Internal("internal error", request_id=rid)))
            return
        if isinstance(answer, Reply):
            await _send(send, answer, head=method == "HEAD")
        else:
            await _stream(answer, receive, send)

    async def _body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self._max_body:
            raise PayloadTooLarge(f"the body is {int(length)} bytes, over {self._max_body}")
        try:
            async with asyncio.timeout(self._body_timeout):
                return await self._read(receive)
        except TimeoutError:
            raise BodyTimeout(
                f"the request body did not arrive within {self._body_timeout:g}s"
            ) from None

    async def _read(self, receive: Receive) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("the client went away before its request was read")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise PayloadTooLarge(f"the body is over {self._max_body} bytes")
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


def _admin(family: Family, method: str, path: str) -> bool:
    """Whether (method, path) is one of `family`'s admin routes (a `/*` one included)."""
    if (method, path) in family.admin:
        return True
    return any(m == method and p.endswith("/*") and path.startswith(p[:-1])
               for m, p in family.admin)  # fmt: skip


def _headers(reply_headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply_headers.items()]


async def _send(send: Send, reply: Reply, *, head: bool = False) -> None:
    headers = {"content-type": "text/plain; charset=utf-8", **reply.headers}
    headers["content-length"] = str(len(reply.body))
    await send({"type": "http.response.start", "status": reply.status,
                "headers": _headers(headers)})  # fmt: skip
    await send({"type": "http.response.body", "body": b"" if head else reply.body})


async def _stream(answer: Stream, receive: Receive, send: Send) -> None:
    """Write the lines as they come; if the client goes away first, cancel the request.

    Two tasks per stream, none per line: the writer, and a watch on the connection; the
    first to end decides.
    """
    writer = asyncio.ensure_future(_write(answer, send))
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({writer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this is cancelled itself (the server stopping)
        gone.cancel()
        writer.cancel()
        (finished,) = await asyncio.gather(writer, return_exceptions=True)
        if isinstance(finished, Exception):  # a bug under the stream: the log has it
            log.error("stream_failed", exc_info=finished)
        if finished is not True and answer.on_close is not None:
            log.info("request_abandoned", request_id=answer.on_close.request_id)
            try:
                await asyncio.wait_for(answer.on_close.cancel(), _CANCEL_S)
            except (TimeoutError, OllameshError, OSError) as exc:
                log.warning("cancel_not_sent", error=repr(exc))
        if answer.on_close is not None:
            await answer.on_close.aclose()  # its subscription, whatever happened


async def _write(answer: Stream, send: Send) -> bool:
    """The response: its status line once the first line is there, as Ollama's server
    sends them, then a write a line; True once it is all out."""
    headers = _headers({"content-type": answer.media_type, **answer.headers})
    start = {"type": "http.response.start", "status": answer.status, "headers": headers}
    lines = answer.lines.__aiter__()
    try:
        first = await anext(lines, b"")
        await send(start)
        if first:
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for line in lines:
                await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except OSError as exc:  # the connection broke under a write
        log.info("client_gone", error=repr(exc))
        return False
    return True


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
