"""Child processes ollamesh starts (the bench's actors, a local `ollama serve`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

__all__ = ["stop_processes"]


async def stop_processes(procs: Iterable[asyncio.subprocess.Process], timeout: float) -> None:
    """SIGTERM every child, then SIGKILL whichever is still there after `timeout`."""
    procs = [p for p in procs if p.returncode is None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
