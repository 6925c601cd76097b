"""The HTTP gateway actor: Ollama's native API in front of the fleet, for clients that
speak HTTP (the `ollama` library, Open WebUI, ...). Stateless: any number of replicas
behind an ordinary load balancer, each a client of the fleet like any other.

With a database, API keys (`actors.gateway.keys`): with at least one, every route needs
`Authorization: Bearer`; with none, and with no database, the gateway is open, on
loopback only unless `gateway.allow_open`. It says which at start."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from nats.js.kv import KeyValue

from actors.gateway import ollama, openai
from actors.gateway.http import App, Family, HttpMetrics
from actors.gateway.keeper import KeyKeeper
from actors.gateway.keys import KeyGuard, KeyRing, is_loopback
from actors.gateway.keystore import KeyStore
from actors.gateway.server import HttpServer
from bus.actor import Actor
from bus.client import Client
from bus.config import Config, ConfigError
from bus.connection import Connection
from bus.limits import SharedLimits
from bus.subjects import Subjects

__all__ = ["Gateway"]

_QUEUE = "gateway"
# At stop, writing when keys were last used may take this long.
_FLUSH_S = 2.0


class Gateway(Actor):
    """Serves Ollama's routes and OpenAI's (`/v1/`) on `gateway.host:gateway.port`."""

    name = "gateway"

    def __init__(
        self,
        nc: Connection,
        subjects: Subjects,
        config: Config,
        limits: KeyValue,
        pool: asyncpg.Pool | None = None,
        metrics: HttpMetrics | None = None,
    ) -> None:
        super().__init__(nc, subjects)
        self.cfg = config.gateway
        self.client = Client(nc=nc, prefix=subjects.prefix, timeout=config.executor.total_timeout_s)
        roles = config.roles
        ollama_routes = ollama.OllamaRoutes(self.client, roles).routes()
        families = [
            Family("/", ollama_routes, ollama.error_reply, admin=ollama.ADMIN),
            Family("/v1/", openai.OpenAIRoutes(self.client, roles).routes(), openai.error_reply),
        ]
        # No database, no keys: open, and on loopback only unless allowed (see `_host`).
        self.ring = KeyRing(self.cfg.keys_max_age_s) if pool is not None else None
        self.guard = KeyGuard(self.ring, SharedLimits(limits), allow_open=self.cfg.allow_open)
        self.keeper: KeyKeeper | None = None
        if pool is not None and self.ring is not None:
            store, reload_s = KeyStore(pool), self.cfg.keys_reload_s
            self.keeper = KeyKeeper(nc, subjects, store, self.ring, reload_s, self.log)
        app = App(families, self.cfg.max_body_bytes, body_timeout=self.cfg.body_timeout_s,
                  guard=self.guard, metrics=metrics)  # fmt: skip
        self.http = HttpServer(app, self.cfg.host, self.cfg.port)

    @property
    def url(self) -> str:
        return self.http.url

    async def setup(self) -> None:
        if self.keeper is not None:
            await self.keeper.load()  # unreadable: every route answers 503 until it is read
        self.http.host = self._host()
        try:
            await self.http.start()
        except OSError as exc:  # the port is taken, or the address is not this host's
            where = f"{self.http.host}:{self.cfg.port}"
            raise ConfigError(f"gateway: cannot listen on {where}: {exc.strerror}") from None
        self.log.info("gateway_listening", url=self.http.url)
        self._say_keys()
        if self.keeper is not None:
            for verb, handler in self.keeper.handlers().items():
                await self.serve(self.subjects.keys(verb), handler, queue=_QUEUE)
            await self.serve(self.subjects.event("keys"), self.keeper.changed)
            self.supervise("keys", self.keeper.refresh, endless=True)

    def _host(self) -> str:
        """`gateway.host`, or loopback if nothing would stand between it and the network:
        no keys (known to be none: keys that cannot be read yet refuse every request) and
        open access not allowed."""
        host = self.cfg.host
        if self.cfg.allow_open or is_loopback(host) or self.guard.required is not False:
            return host
        loopback = "::1" if ":" in host else "127.0.0.1"
        self.log.warning(
            "gateway_loopback_only", host=loopback, configured=host,
            message=f"no API keys, so the gateway listens on {loopback} only, not on {host}:"
            " create a key (ollamesh keys create NAME) and restart it, or set"
            " gateway.allow_open = true to serve without keys",
        )  # fmt: skip
        return loopback

    def _say_keys(self) -> None:
        """Whether requests need a key, in one line at start."""
        required = self.guard.required
        if required is None:
            self.log.warning("gateway_keys", required="unknown", message="the API keys cannot"
                             " be read: every route answers 503 until they can")  # fmt: skip
        elif required:
            assert self.ring is not None
            self.log.info("gateway_keys", required=True, keys=len(self.ring),
                          message="every route needs Authorization: Bearer <key>")  # fmt: skip
        else:
            why = "no API keys" if self.ring is not None else "no database, so no API keys"
            open_to = "whoever reaches it" if self.cfg.allow_open else "clients on this machine"
            self.log.warning("gateway_keys", required=False, database=self.ring is not None,
                             message=f"{why}: every route is open to {open_to}")  # fmt: skip

    async def before_drain(self) -> None:
        await self.http.stop(self.cfg.shutdown_grace_s)

    async def teardown(self) -> None:
        if self.keeper is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.keeper.flush(), _FLUSH_S)
