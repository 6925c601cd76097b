"""Run a set of actors in one process: connect (or start nats-server), provision, serve, drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import asyncpg
import structlog

from actors.cache import CacheKeeper
from actors.construction import ConstructionAnalyzer
from actors.executor import Executor
from actors.gateway import Gateway
from actors.health import HealthMonitor
from actors.prompts import PromptStore
from actors.reasoning import Reasoner
from actors.recorder import Recorder
from actors.router import Router
from actors.runtime.metrics import Metrics
from actors.runtime.names import ACTORS, DATABASE_ACTORS, DEFAULT_ACTORS
from actors.store import EmbeddedPostgres, open_pool
from bus.actor import Actor
from bus.board import Board
from bus.config import Config, ConfigError
from bus.connection import Connection, close_within, connect
from bus.provision import provision
from bus.registry import HostRegistry
from bus.server import EmbeddedNats
from bus.subjects import Subjects

__all__ = ["ACTORS", "Stack", "default_data_dir", "run_until_signalled"]

log = structlog.get_logger("actors.runtime.supervisor")

# A pool whose connections are not released by then is closed by force.
_POOL_CLOSE_S = 10.0
# Executors announce their models before `start` returns, within this bound.
_READY_TIMEOUT_S = 10.0
# Beyond the actors' grace, what stopping may take (the pool, Postgres, the server)
# before the process gives up waiting and ends anyway.
_STOP_SLACK_S = 15.0
# With the connection gone nothing can be handed back: in-flight work gets this long.
_LOST_GRACE_S = 1.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The longest the connection's drain may take at the end (then it is closed).
_DRAIN_S = 5.0


def default_data_dir(what: str = "nats") -> Path:
    """Where `ollamesh up` keeps JetStream (or Postgres) data when the config names none."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "ollamesh" / what


# The actors that need the fleet's view: the host registry and the executors' board.
_FLEET_VIEW = frozenset({"router", "executor", "health"})


class Stack:
    """The actors of one process sharing one NATS connection.

    Without `config.nats.url` it starts an embedded nats-server first, on
    `config.nats.port` (0: a free port).
    """

    def __init__(
        self,
        config: Config,
        *,
        actors: tuple[str, ...] = DEFAULT_ACTORS,
        data_dir: Path | None = None,
        db_dir: Path | None = None,
    ) -> None:
        unknown = set(actors) - set(ACTORS)
        if unknown:
            raise ConfigError(f"unknown actors {sorted(unknown)}; known: {', '.join(ACTORS)}")
        self.config = config
        self.subjects = Subjects(config.prefix)
        self._wanted = actors
        self._data_dir = data_dir
        self._db_dir = db_dir
        self.server: EmbeddedNats | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.pool: asyncpg.Pool | None = None
        self.recorder: Recorder | None = None
        self.cache: CacheKeeper | None = None
        self.prompts: PromptStore | None = None
        self.reasoning: Reasoner | None = None
        self.construction: ConstructionAnalyzer | None = None
        self.gateway: Gateway | None = None
        self.health: HealthMonitor | None = None
        self.nc: Connection | None = None
        self.registry: HostRegistry | None = None
        self.board: Board | None = None
        self.metrics = Metrics()
        self.router: Router | None = None
        self.executors: list[Executor] = []
        self.url = config.nats.url or ""

    @property
    def actors(self) -> list[Actor]:
        """Every running actor, router first."""
        stores = (
            self.recorder, self.cache, self.prompts, self.health, self.reasoning,
            self.construction, self.gateway,
        )  # fmt: skip
        others = [a for a in stores if a is not None]
        return ([self.router] if self.router else []) + list(self.executors) + others

    async def start(self) -> None:
        """Start everything; return once the router knows what the executors serve."""
        if not self.url:
            data_dir = self._data_dir or (
                Path(self.config.nats.data_dir) if self.config.nats.data_dir else None
            )
            port = self.config.nats.port or None
            self.server = EmbeddedNats(port=port, data_dir=data_dir)
            self.url = await self.server.start()
        self.nc = await connect(
            self.url,
            name="ollamesh",
            credentials=self.config.nats.auth,
            connect_timeout=self.config.nats.connect_timeout_s,
        )
        self.nc.on_reconnect(self._reconnected)
        if (port := self.config.metrics.port) is not None:
            self.metrics.watch_loops(lambda: self.actors)
            self.metrics.serve(self.config.metrics.host, port)
        buckets = await provision(self.nc.jetstream(), self.subjects, self.config)
        # The fleet's view (hosts, executors' load) only for the actors that route by it:
        # a process of gateways or stores would read every executor's board for nothing.
        if _FLEET_VIEW.intersection(self._wanted):
            self.registry = HostRegistry(
                buckets.hosts,
                ttl=self.config.executor.registry_ttl_s,
                health=buckets.health,
                health_ttl=3 * self.config.health.interval_s,
            )
            await self.registry.start()
            self.board = Board(self.nc, self.subjects)
            await self.board.start()
        if "executor" in self._wanted:
            for host in self.config.host_list():
                executor = Executor(
                    self.nc,
                    self.subjects,
                    self.config,
                    host,
                    self.registry,
                    self.board,
                    self.metrics,
                    buckets.claims,
                )
                await executor.start()
                self.executors.append(executor)
        if "router" in self._wanted:
            self.router = Router(
                self.nc,
                self.subjects,
                self.config,
                self.registry,
                self.board,
                buckets.limits,
                buckets.cache,
                self.metrics,
                buckets.claims,
            )
            await self.router.start()
        if DATABASE_ACTORS & set(self._wanted) or self._gateway_database:
            self.pool = await self._open_database()
        if "recorder" in self._wanted:
            assert self.pool is not None
            self.recorder = Recorder(self.nc, self.subjects, self.config, self.pool, self.metrics)
            await self.recorder.start()
        if "cache" in self._wanted:
            assert self.pool is not None
            self.cache = CacheKeeper(
                self.nc, self.subjects, self.config, self.pool, buckets.cache, self.metrics
            )
            await self.cache.start()
        if "prompts" in self._wanted:
            assert self.pool is not None
            self.prompts = PromptStore(self.nc, self.subjects, self.config, self.pool)
            await self.prompts.start()
        if "reasoning" in self._wanted:
            assert self.pool is not None
            self.reasoning = Reasoner(self.nc, self.subjects, self.config, self.pool)
            await self.reasoning.start()
        if "construction" in self._wanted:
            assert self.pool is not None
            self.construction = ConstructionAnalyzer(self.nc, self.subjects, self.config, self.pool)
            await self.construction.start()
        if "gateway" in self._wanted:
            self.gateway = Gateway(
                self.nc, self.subjects, self.config, buckets.limits, pool=self.pool,
                metrics=self.metrics,
            )  # fmt: skip
            await self.gateway.start()
        if "health" in self._wanted:
            self.health = HealthMonitor(
                self.nc,
                self.subjects,
                self.config,
                self.registry,
                self.board,
                buckets.health,
                self.metrics,
            )
            await self.health.start()
        await self.wait_for_executors()
        log.info(
            "stack_started",
            nats=self.url,
            actors=[a.name for a in self.actors],
            hosts=[(e.host_url, "up" if e.up else "down", e.models) for e in self.executors],
        )

    @property
    def _gateway_database(self) -> bool:
        """Whether the gateway needs a database of its own here (for API keys): when one is
        configured. Without `database.url` it uses the embedded one only if another actor
        of this process starts it; a gateway alone has none, so no keys (loopback only),
        rather than an embedded Postgres of its own holding keys no other gateway sees."""
        return "gateway" in self._wanted and bool(self.config.database.url)

    async def _open_database(self) -> asyncpg.Pool:
        """Connect to `database.url`, or start the embedded Postgres first."""
        db = self.config.database
        url = db.url
        if not url:
            data_dir = self._db_dir or (
                Path(db.data_dir) if db.data_dir else default_data_dir("postgres")
            )
            self.postgres = EmbeddedPostgres(data_dir)
            url = await self.postgres.start()
        return await open_pool(url, max_size=db.pool_max, timeout=db.connect_timeout_s)

    async def _reconnected(self) -> None:
        """The server may have restarted: recreate what it lost (memory-backed buckets,
        or everything on a fresh server), watch the buckets anew, let each actor redo
        its part (executors announce and complete their streams, the monitor checks)."""
        assert self.nc is not None
        nc = self.nc
        if self.board:
            self.board.reconnected()
        steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("provision", lambda: provision(nc.jetstream(), self.subjects, self.config))
        ]
        if self.registry:
            steps.append(("registry", self.registry.resync))
        steps.extend((actor.name, actor.reconnected) for actor in self.actors)
        for name, step in steps:  # each on its own: one failing leaves the others to run
            try:
                await step()
            except Exception:
                log.exception("resync_failed", step=name)
        log.info("stack_resynced")

    async def wait_for_executors(self, timeout: float = _READY_TIMEOUT_S) -> None:
        """Wait until this process's registry view lists every model its executors serve."""
        if self.registry is None:  # no executor here
            return
        wanted = {m for e in self.executors for m in e.models}
        await self.registry.wait_until(lambda r: wanted <= r.models(), timeout)

    @property
    def lost(self) -> bool:
        """Whether the NATS connection closed for good (the process can only end)."""
        return self.nc is not None and self.nc.lost.is_set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop admitting, let executors finish or hand back their work, then drain.

        Returns within `grace` plus a bounded slack whatever state the connections are
        in; with the NATS connection lost, in-flight work gets at most a second. The
        servers this process started (nats-server, Postgres) are stopped in any case.
        """
        grace = self.config.executor.shutdown_grace_s if grace is None else grace
        if self.lost:
            grace = min(grace, _LOST_GRACE_S)
        try:
            async with asyncio.timeout(grace + _STOP_SLACK_S):
                await self._stop_actors(grace)
        except TimeoutError:
            log.error("stack_stop_overran", bound_s=grace + _STOP_SLACK_S)
        finally:
            await self._stop_servers()
        log.info("stack_stopped")

    async def _stop_actors(self, grace: float) -> None:
        if self.router:
            await self.router.stop(grace)
        await asyncio.gather(*(e.stop(grace) for e in self.executors))
        if self.gateway:  # the front door closes first
            await self.gateway.stop(grace)
        for store in (
            self.construction, self.reasoning, self.health, self.recorder, self.cache,
            self.prompts,
        ):  # fmt: skip
            if store:
                await store.stop(grace)
        if self.pool:
            pool, self.pool = self.pool, None
            try:
                await asyncio.wait_for(pool.close(), _POOL_CLOSE_S)
            except TimeoutError:
                pool.terminate()
        if self.registry:
            await self.registry.stop()
        if self.board:
            await self.board.stop()
        if self.nc:
            await close_within(self.nc, _DRAIN_S)

    async def _stop_servers(self) -> None:
        """Stop what this process started, whatever happened before (each at most once)."""
        if self.pool:
            self.pool.terminate()
            self.pool = None
        if self.postgres:
            await self.postgres.stop()
        if self.server:
            await self.server.stop()
        self.metrics.close()

    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.stop(grace=1.0)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def run_until_signalled(stack: Stack) -> int:
    """Run `stack` until SIGINT or SIGTERM, then stop it gracefully.

    Returns 0 after a signal; 1 when the NATS connection closed for good (so systemd or
    Kubernetes start the process again rather than keep one that answers nothing). A
    second signal while draining stops at once, handing nothing more back.
    """
    loop = asyncio.get_running_loop()
    signals = asyncio.Queue[int]()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        return await _serve(stack, signals)
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)


async def _serve(stack: Stack, signals: asyncio.Queue[int]) -> int:
    loop = asyncio.get_running_loop()
    starting = loop.create_task(stack.start())
    signalled = loop.create_task(signals.get())
    await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal while starting: stop what started, at once
        log.info("signal_received", action="stopping before start completed")
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await stack.stop(grace=0.0)
        return 0
    if starting.exception() is not None:
        signalled.cancel()
        await stack.stop(grace=1.0)
        starting.result()  # raises the start's failure
    assert stack.nc is not None
    lost = loop.create_task(stack.nc.wait_lost())
    await asyncio.wait({signalled, lost}, return_when=asyncio.FIRST_COMPLETED)
    signalled.cancel()
    lost.cancel()
    code = 1 if stack.lost else 0
    if code:
        log.error("exiting", reason="the NATS connection was closed for good", exit_code=code)
    else:
        log.info("signal_received", action="draining")
    stopping = loop.create_task(stack.stop())
    again = loop.create_task(signals.get())
    await asyncio.wait({stopping, again}, return_when=asyncio.FIRST_COMPLETED)
    if not stopping.done():
        log.warning("signal_received", action="stopping now")
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        await stack.stop(grace=0.0)
    again.cancel()
    return code
