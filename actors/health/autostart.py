"""Start `ollama serve` for a local host that is down (the old service's `autoStart`)."""

from __future__ import annotations

import asyncio
import os
import shutil
from urllib.parse import urlsplit

import structlog

from actors.runtime.processes import stop_processes

__all__ = ["LocalOllama", "is_local"]

log = structlog.get_logger("actors.health.autostart")

_LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
# `ollama serve` gets this long to stop on SIGTERM before it is killed.
_STOP_S = 10.0


def is_local(url: str) -> bool:
    """Whether `url` names this machine, where starting a server could help."""
    return (urlsplit(url).hostname or "") in _LOCAL


class LocalOllama:
    """The `ollama serve` processes this monitor started, at most one per host."""

    def __init__(self, binary: str = "ollama") -> None:
        self._binary = binary
        self._started: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, url: str) -> bool:
        """Start a server listening where `url` points; False if that cannot help.

        Nothing happens for a remote host, when the binary is not on PATH, or when a
        server this monitor started for `url` is still running.
        """
        running = self._started.get(url)
        if running is not None and running.returncode is None:
            return False
        path = shutil.which(self._binary)
        if path is None or not is_local(url):
            return False
        parts = urlsplit(url)
        address = f"{parts.hostname}:{parts.port or 11434}"
        env = {**os.environ, "OLLAMA_HOST": address}
        process = await asyncio.create_subprocess_exec(
            path,
            "serve",
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self._started[url] = process
        log.info("ollama_started", host=url, binary=path, pid=process.pid)
        return True

    async def stop(self) -> None:
        """Stop every server this monitor started."""
        await stop_processes(self._started.values(), _STOP_S)
        for url, process in self._started.items():
            log.info("ollama_stopped", host=url, pid=process.pid)
        self._started.clear()
