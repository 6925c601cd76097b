"""The HTTP gateway actor: Ollama's native API in front of the fleet, for clients that
speak HTTP (the `ollama` library, Open WebUI, ...). Stateless: any number of replicas
behind an ordinary load balancer, each a client of the fleet like any other."""

from __future__ import annotations

from actors.gateway.http import App, Family
from actors.gateway.ollama import OllamaRoutes, error_reply
from actors.gateway.server import HttpServer
from bus.actor import Actor
from bus.client import Client
from bus.config import Config, ConfigError
from bus.connection import Connection
from bus.subjects import Subjects

__all__ = ["Gateway"]


class Gateway(Actor):
    """Serves Ollama's routes on `gateway.host:gateway.port`."""

    name = "gateway"

    def __init__(self, nc: Connection, subjects: Subjects, config: Config) -> None:
        super().__init__(nc, subjects)
        self.cfg = config.gateway
        self.client = Client(nc=nc, prefix=subjects.prefix, timeout=config.executor.total_timeout_s)
        families = [Family("/", OllamaRoutes(self.client).routes(), error_reply)]
        self.http = HttpServer(App(families, self.cfg.max_body_bytes), self.cfg.host, self.cfg.port)

    @property
    def url(self) -> str:
        return self.http.url

    async def setup(self) -> None:
        try:
            await self.http.start()
        except OSError as exc:  # the port is taken, or the address is not this host's
            where = f"{self.cfg.host}:{self.cfg.port}"
            raise ConfigError(f"gateway: cannot listen on {where}: {exc.strerror}") from None
        self.log.info("gateway_listening", url=self.http.url)

    async def before_drain(self) -> None:
        await self.http.stop(self.cfg.shutdown_grace_s)
