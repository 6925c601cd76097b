"""An ASGI app on a real socket, served by uvicorn's protocol inside the running loop.

Not `uvicorn.Server.serve()`: that takes over SIGINT and SIGTERM, which belong to the
process's supervisor here; an actor starts and stops its listener with the actor.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.server import ServerState

__all__ = ["HttpServer"]

_BACKLOG = 2048
# How long a stop waits for answers under way before it drops their connections.
_SETTLE_S = 2.0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it every small NDJSON line would wait on the peer's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """`app` listening on `host:port` (0: any free port) until stopped."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._config = uvicorn.Config(
            app, http="httptools", interface="asgi3", lifespan="off", access_log=False,
            log_config=None, proxy_headers=False, server_header=False, date_header=False,
            timeout_keep_alive=300, backlog=_BACKLOG,
        )  # fmt: skip
        self._config.load()
        self._server: asyncio.Server | None = None
        self._state = ServerState()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        state, config = self._state, self._config

        def protocol() -> asyncio.Protocol:
            factory: Any = config.http_protocol_class
            made: asyncio.Protocol = factory(
                config=config, server_state=state, app_state={}, _loop=loop
            )
            return made

        try:
            self._server = await loop.create_server(protocol, sock=sock, backlog=_BACKLOG)
        except BaseException:
            sock.close()
            raise

    async def stop(self, grace: float) -> None:
        """Stop listening; answers under way get `grace` seconds, then their connections
        are dropped (their requests are cancelled on the fleet by the app)."""
        server, state = self._server, self._state
        if server is None:
            return
        self._server = None
        server.close()
        for conn in list(state.connections):
            conn.shutdown()  # idle connections close now, busy ones after their answer
        if state.tasks:
            await asyncio.wait(set(state.tasks), timeout=grace)
        for conn in list(state.connections):
            conn.transport.abort()
        if state.tasks:
            await asyncio.wait(set(state.tasks), timeout=_SETTLE_S)
