"""Running one command: uvloop, typed failures as one line and an exit code, Ctrl-C.

Every command of the CLI runs through `run_async`, which imports no command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from bus.config import ConfigError
from bus.errors import OllameshError

__all__ = ["SERVERS_GRACE_S", "config_failed", "run_async"]

# After Ctrl-C a command has this long to let go (close its connection, stop what it
# started); then the process ends anyway, whatever it is still waiting for.
_INTERRUPT_GRACE_S = 1.0
# A command running servers of its own (the demo's nats-server and Postgres) gets longer:
# what it leaves behind would go on running.
SERVERS_GRACE_S = 5.0
# How long a hard exit waits for stdout and stderr to flush (a full pipe would block it).
_FLUSH_S = 0.2


def config_failed(exc: ConfigError) -> int:
    """Print each problem of the configuration on its own line; return the exit code, 2."""
    for line in str(exc).splitlines():
        print(f"error: {line}", file=sys.stderr)
    return 2


def run_async(
    coro_fn: Callable[[], Coroutine[Any, Any, int]], *, grace: float | None = _INTERRUPT_GRACE_S
) -> int:
    """Run a coroutine on uvloop when it is installed; typed failures exit 1, Ctrl-C 130.

    Ctrl-C (SIGINT) cancels the command, which then has `grace` seconds to clean up before
    the process ends without it; a second Ctrl-C ends it at once. `grace=None` leaves
    signals to the command (`ollamesh up` drains on its own terms).
    """
    try:
        import uvloop

        runner: Callable[..., int] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        runner = asyncio.run
    try:
        return runner(coro_fn() if grace is None else _interruptible(coro_fn, grace))
    except OllameshError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        return config_failed(exc)
    except KeyboardInterrupt:  # before or after the command's own handling of SIGINT
        return 130


async def _interruptible(coro_fn: Callable[[], Coroutine[Any, Any, int]], grace: float) -> int:
    """Run the command; on SIGINT cancel it, and end the process if it has not ended in time.

    A cancel alone does not always end a command: `asyncio.wait_for` in Python 3.11 (under
    nats-py's requests and `next_msg`) drops one that arrives as its result does, and
    threads (a blocked read of stdin) and the drain of a connection outlive the task.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        if interrupted:
            _exit_now()
        interrupted = True
        watchdog = threading.Timer(grace, _exit_now)
        watchdog.daemon = True
        watchdog.start()
        loop.call_soon_threadsafe(task.cancel)

    # SIGINT ignored (a background job of a shell script) stays ignored.
    previous = signal.getsignal(signal.SIGINT)
    handled = previous not in (signal.SIG_IGN, None) and (
        threading.current_thread() is threading.main_thread()
    )
    if handled:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        code = await coro_fn()
    except (asyncio.CancelledError, Exception):
        if interrupted:  # whatever it raised on the way out, the user asked it to stop
            return 130
        raise
    finally:
        if handled:
            signal.signal(signal.SIGINT, previous)
    return 130 if interrupted else code


def _exit_now() -> None:
    """End the process with 130 at once, after a bounded flush of stdout and stderr."""

    def flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                if stream.isatty():
                    stream.write("\x1b[?25h")  # the cursor, should a live display have hidden it
                stream.flush()

    flusher = threading.Thread(target=flush, daemon=True)
    flusher.start()
    flusher.join(_FLUSH_S)
    os._exit(130)
