"""A simulated Ollama host on a real socket, served by uvicorn inside the running loop."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Iterable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Literal

import structlog
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from actors.simulator.app import Api, build_app
from actors.simulator.engine import DEFAULT_MODELS, Engine
from actors.simulator.exchange import ABORT

__all__ = ["SimulatorServer", "run_forever"]

_BACKLOG = 2048
_SETTLE_S = 2.0  # how long a killed host's handlers get to notice before being cancelled


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every small NDJSON line waits on the peer's delayed ACK (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # A restarted host must get its port back although killed connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class SimulatorServer:
    """A simulated Ollama host at `url`; `port=0` takes a free port, kept across restarts.

    `kill()` stops listening and drops every connection mid-answer, as a host that dies
    does; `start()` brings it back on the same port with the same models (none loaded).
    `stop()` is the graceful version: answers in flight get `grace` seconds to finish.
    An `engine` given replaces the one the other settings would make. `api="openai"`
    makes it a llama-server instead (`actors.simulator.openai_api`) over the same engine.
    """

    def __init__(
        self,
        models: Iterable[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens_per_second: float = 0.0,
        num_parallel: int = 4,
        max_queue: int = 512,
        load_ms: float = 0.0,
        keep_alive: float = 300.0,
        pull_bytes_per_second: float = 0.0,
        disk_bytes: int | None = None,
        engine: Engine | None = None,
        api: Api = "ollama",
    ) -> None:
        self.engine = engine or Engine(
            DEFAULT_MODELS if models is None else models,
            tokens_per_second=tokens_per_second,
            num_parallel=num_parallel,
            max_queue=max_queue,
            load_ms=load_ms,
            keep_alive=keep_alive,
            pull_bytes_per_second=pull_bytes_per_second,
            disk_bytes=disk_bytes,
        )
        self.host = host
        self.port = port
        self.api = api
        self._app = build_app(self.engine, api)
        self._config = uvicorn.Config(
            self._with_abort,
            http="httptools",
            interface="asgi3",
            lifespan="off",
            access_log=False,
            log_config=None,  # leave the process's logging alone
            proxy_headers=False,
            server_header=False,
            date_header=False,
            # Ollama (Go's net/http) keeps idle connections open; a short timeout here
            # would race pooled clients reusing a connection as it closes.
            timeout_keep_alive=300,
            backlog=_BACKLOG,
        )
        self._config.load()
        self._server: asyncio.Server | None = None
        self._state = ServerState()
        self._lifespan: AsyncExitStack | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def state(self) -> Literal["running", "stopped"]:
        return "running" if self._server is not None else "stopped"

    async def _with_abort(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["extensions"] = {**(scope.get("extensions") or {}), ABORT: self._abort}
        await self._app(scope, receive, send)

    def _abort(self, scope: Scope) -> None:
        """Drop the connection `scope` came on, without another byte."""
        client = scope.get("client")
        for conn in list(self._state.connections):
            if getattr(conn, "client", None) == client:
                conn.transport.abort()

    async def start(self) -> SimulatorServer:
        """Listen and serve; return once connections are accepted (no-op if running)."""
        if self._server is not None:
            return self
        loop = asyncio.get_running_loop()
        sock = _listen(self.host, self.port)
        self.port = sock.getsockname()[1]
        state = self._state = ServerState()
        config = self._config

        # Not uvicorn.Server.serve(): it takes over SIGINT and SIGTERM and polls for exit
        # every 100 ms. A host inside a test or the demo must leave signals alone and
        # start or die at once, so it runs uvicorn's protocol on a server of its own.
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
        # The app's lifespan runs while the host serves (llama-server loads its models).
        lifespan = AsyncExitStack()
        await lifespan.enter_async_context(self._app.router.lifespan_context(self._app))
        self._lifespan = lifespan
        return self

    async def kill(self) -> None:
        """Stop listening and drop every connection at once, mid-answer or not."""
        await self._close(grace=None)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening, give answers in flight `grace` seconds, then drop what is left."""
        await self._close(grace)

    async def _close(self, grace: float | None) -> None:
        server, state = self._server, self._state
        if server is None:
            return
        self._server = None
        server.close()
        if grace is not None:
            for conn in list(state.connections):
                conn.shutdown()  # idle connections close now, busy ones after their answer
            if state.tasks:
                await asyncio.wait(set(state.tasks), timeout=grace)
        for conn in list(state.connections):
            conn.transport.abort()
        await self._settle(state)
        if self._lifespan is not None:
            await self._lifespan.aclose()
            self._lifespan = None

    async def _settle(self, state: ServerState) -> None:
        # Handlers see their client gone and release their slots; wait for that so a
        # caller of kill() finds the engine idle. A handler that ignores it is cancelled.
        if state.tasks:
            _, stuck = await asyncio.wait(set(state.tasks), timeout=_SETTLE_S)
            for task in stuck:
                task.cancel()
        self.engine.forget_loaded()

    async def __aenter__(self) -> SimulatorServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop(grace=1.0)


async def run_forever(
    sim: SimulatorServer, *, until: asyncio.Event | None = None, grace: float = 5.0
) -> bool:
    """Serve until `until` is set (default: SIGINT or SIGTERM), then stop gracefully.

    SIGINT is Ctrl-C: answers in flight are dropped at once rather than given `grace`.
    Returns whether SIGINT ended it.
    """
    loop = asyncio.get_running_loop()
    done = until or asyncio.Event()
    interrupted = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal interrupted
        interrupted = interrupted or sig == signal.SIGINT
        done.set()

    signals = [] if until is not None else [signal.SIGINT, signal.SIGTERM]
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await sim.start()
        engine = sim.engine
        structlog.get_logger("actors.simulator").info(
            "simulator listening",
            url=sim.url,
            api=sim.api,
            models=sorted(engine.models),
            tokens_per_second=engine.tokens_per_second,
            num_parallel=engine.num_parallel,
            max_queue=engine.max_queue,
            faults=[f.kind for f in engine.faults],
        )
        await done.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await (sim.kill() if interrupted else sim.stop(grace))
    return interrupted
