"""CPU milliseconds per request of each process under test, from the processes' own
accounting: on a shared machine this moves far less than wall times between runs.

Linux only: another process's user plus system time is read from `/proc/<pid>/stat`
(every thread's, those that ended included, in clock ticks: 10 ms on most kernels, so a
figure wants a scenario of some hundreds of requests); this process's comes from
`resource.getrusage`. Elsewhere, or for a process that is gone, a figure is None.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

__all__ = ["CpuMeter", "children_named"]


def _ticks_per_s() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


_TICK_S = 1.0 / _ticks_per_s()


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command's name (which may hold spaces)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _seconds(pid: int | None) -> float | None:
    """User plus system CPU seconds of `pid` (None: this process) so far."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = _stat(pid)
    if fields is None:
        return None
    # stat(5) fields 14 and 15, utime and stime; the list starts at field 3.
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def children_named(name: str) -> list[int]:
    """The pids of this process's children whose command is `name` (Linux; else none)."""
    if not sys.platform.startswith("linux"):
        return []
    me, found = str(os.getpid()), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm == name and (fields := _stat(int(entry.name))) is not None and fields[1] == me:
            found.append(int(entry.name))
    return found


# By process name; None where a process's time is unknown.
Seconds = dict[str, float | None]


class CpuMeter:
    """CPU time of named processes (pid None: this one), read before and after a scenario."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids

    @classmethod
    def of(cls, children: dict[str, int]) -> CpuMeter:
        """This process as `client` (the load generator, and whatever else the bench runs in
        its loop: each bench says what), `children` by name, and the nats-server child."""
        servers = children_named("nats-server")
        nats = {f"nats_server{'_' + str(i) if i else ''}": pid for i, pid in enumerate(servers)}
        return cls({"client": None, **children, **nats})

    def read(self) -> Seconds:
        return {name: _seconds(pid) for name, pid in self.pids.items()}

    def ms_per_request(self, before: Seconds, requests: int) -> Seconds:
        """Each process's CPU ms per request since `before`, and their total."""
        after, out = self.read(), {}
        for name, start in before.items():
            end = after.get(name)
            out[name] = None if start is None or end is None else (end - start) * 1e3 / requests
        known = [v for v in out.values() if v is not None]
        out["total"] = sum(known) if known else None
        return {k: None if v is None else round(v, 3) for k, v in out.items()}
