"""The simulated host's state and policy, apart from HTTP: models, memory, slots, faults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import math
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from actors.simulator.catalogue import ModelInfo, canonical_name, describe
from actors.simulator.scripts import Scripts

__all__ = [
    "DEFAULT_MODELS",
    "Busy",
    "Engine",
    "Fault",
    "FaultKind",
    "Loaded",
    "Stats",
    "parse_keep_alive",
]

DEFAULT_MODELS = ("llama3.2:3b", "qwen2.5:7b", "nomic-embed-text")

FaultKind = Literal[
    "busy", "error", "die_after", "error_after", "truncate_after", "stall", "slow_first_token"
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}  # fmt: skip


def _now() -> str:
    moment = datetime.datetime.now(datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A failure to inject into generate, chat and embed requests.

    `busy` answers 503 and `error` 500 at once; `die_after` cuts the connection after
    `tokens` tokens, `error_after` sends Ollama's `{"error": ...}` line there,
    `truncate_after` ends the body cleanly there with no `done` line (HTTP 200 all the
    same), `stall` stops sending there but keeps the connection open; `slow_first_token`
    holds the first token back `delay_ms`. `count` limits the fault to the next K matching
    requests (None: until cleared); `models` limits it to those models; `message` replaces
    the error text.
    """

    kind: FaultKind
    tokens: int = 0
    delay_ms: int = 0
    count: int | None = None
    models: list[str] | None = None
    message: str | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0 or self.delay_ms < 0:
            raise ValueError("tokens and delay_ms must not be negative")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1 (or null: until cleared)")


class Busy(Exception):
    """Every slot of the model and the whole waiting queue are taken (Ollama answers 503)."""


_PROMPTS_KEPT = 256


@dataclass
class Stats:
    """What the host has seen since it started (or since `reset_stats`)."""

    requests: Counter[str] = field(default_factory=Counter)
    generations: int = 0
    in_flight: int = 0
    queued: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    # The latest prompts (after their system prompt; or last chat messages) answered,
    # oldest first (`/_sim/prompts`).
    prompts: deque[str] = field(default_factory=lambda: deque(maxlen=_PROMPTS_KEPT))

    def snapshot(self) -> dict[str, object]:
        """Return the counters as `GET /_sim/stats` shows them."""
        return {
            "requests": dict(self.requests),
            "generations": self.generations,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "faults": dict(self.faults),
        }


@dataclass
class Loaded:
    """A model in (simulated) memory: `/api/ps` lists it until it expires."""

    info: ModelInfo
    context_length: int
    keep_alive: float
    expires: float = math.inf  # on the engine's clock; while in use it cannot expire
    users: int = 0
    doomed: bool = False  # unloaded while in use: leaves when its last request ends

    def expires_at(self, now: float) -> datetime.datetime:
        """Return the wall-clock expiry `/api/ps` reports when the engine's clock reads `now`.

        While requests use the model it is `keep_alive` from now; for `keep_alive < 0` it
        is centuries away, as with Ollama.
        """
        left = self.keep_alive if self.users else self.expires - now
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=min(left, 9e9))


def parse_keep_alive(value: object, default: float) -> float:
    """Read `keep_alive` as Ollama does: the seconds a model stays loaded after a request.

    Numbers are seconds; strings are Go durations (`"5m"`, `"1h30m"`, `"0"`); anything
    negative means forever (`math.inf`). Raises ValueError with Go's wording otherwise.
    """
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid keep_alive {value!r}")
    if isinstance(value, int | float):
        return math.inf if value < 0 else float(value)
    text = value.strip()
    body = text.lstrip("+-")
    if body in ("0", ""):
        if body == "":
            raise ValueError(f'time: invalid duration "{value}"')
        return 0.0
    seconds, pos = 0.0, 0
    while pos < len(body):
        part = _DURATION_PART.match(body, pos)
        if part is None:
            if re.fullmatch(r"[\d.]+", body[pos:]):
                raise ValueError(f'time: missing unit in duration "{value}"')
            raise ValueError(f'time: invalid duration "{value}"')
        seconds += float(part[1]) * _UNIT_SECONDS[part[2]]
        pos = part.end()
    return math.inf if text.startswith("-") else seconds


@dataclass
class _Armed:
    fault: Fault
    left: int | None  # requests it still applies to; None: until cleared


class _Slots:
    """The parallel slots of one model and the requests waiting for one, in order."""

    __slots__ = ("free", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiters: deque[asyncio.Future[None]] = deque()

    def release(self) -> None:
        # Hand the slot straight to the oldest waiter so no newcomer can overtake it.
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class Engine:
    """Everything a simulated Ollama host knows and decides, with no network in sight."""

    def __init__(
        self,
        models: Iterable[str] = DEFAULT_MODELS,
        *,
        tokens_per_second: float = 0.0,
        num_parallel: int = 4,
        max_queue: int = 512,
        load_ms: float = 0.0,
        keep_alive: float = 300.0,
        unpullable: tuple[str, ...] = ("missing",),
        pull_bytes_per_second: float = 0.0,
        disk_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if num_parallel < 1 or max_queue < 0 or tokens_per_second < 0 or load_ms < 0:
            raise ValueError("num_parallel >= 1; max_queue, tokens_per_second, load_ms >= 0")
        if pull_bytes_per_second < 0 or (disk_bytes is not None and disk_bytes < 0):
            raise ValueError("pull_bytes_per_second and disk_bytes must not be negative")
        self.tokens_per_second = tokens_per_second
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.load_ms = load_ms
        self.keep_alive = keep_alive
        self.unpullable = unpullable
        self.pull_bytes_per_second = pull_bytes_per_second  # 0: downloads are instant
        self.disk_bytes = disk_bytes  # None: the disk never fills
        self.clock = clock  # keep-alive expiry runs on it; tests may pass a fake
        self.stats = Stats()
        self.models: dict[str, ModelInfo] = {}
        started = _now()
        for name in models:
            self.add(name, modified_at=started)
        self._faults: list[_Armed] = []
        # Scripted answers to given prompts (`/_sim/scripts`).
        self.scripts = Scripts()
        self._loaded: dict[str, Loaded] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._slots: dict[str, _Slots] = {}
        self._changed = asyncio.Event()

    # -- catalogue ------------------------------------------------------------------------

    def find(self, name: str) -> ModelInfo | None:
        """Find the model called `name` (no tag means `latest`) if the host has it."""
        return self.models.get(canonical_name(name)) if name else None

    def add(self, name: str, modified_at: str | None = None) -> ModelInfo:
        """Put a model on the host's disk (at start-up, or when a pull finishes)."""
        info = dataclasses.replace(describe(name), modified_at=modified_at or _now())
        self.models[info.name] = info
        return info

    def copy(self, source: str, destination: str) -> ModelInfo | None:
        """Put `source`'s model on disk again as `destination` (the same blobs and details);
        None if the host does not have `source`."""
        info = self.find(source)
        if info is None:
            return None
        copied = dataclasses.replace(info, name=describe(destination).name, modified_at=_now())
        self.models[copied.name] = copied
        return copied

    def remove(self, name: str) -> bool:
        """Delete a model from disk and memory; False if the host does not have it."""
        info = self.find(name)
        if info is None:
            return False
        del self.models[info.name]
        self._loaded.pop(info.name, None)
        return True

    def disk_free(self) -> float:
        """Bytes left on the (imaginary) disk for new models."""
        if self.disk_bytes is None:
            return math.inf
        return self.disk_bytes - sum(info.size for info in self.models.values())

    def can_pull(self, name: str) -> bool:
        """Tell whether the (imaginary) registry has `name`: not if it starts `unpullable`."""
        base = canonical_name(name).rsplit("/", 1)[-1]
        return bool(name.strip()) and not base.startswith(self.unpullable)

    # -- memory -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def using(
        self, info: ModelInfo, keep_alive: float, num_ctx: int | None = None
    ) -> AsyncIterator[None]:
        """Load the model if it is cold (taking `load_ms`), keep it loaded while in use."""
        entry = await self._load(info, keep_alive, num_ctx)
        entry.users += 1
        try:
            yield
        finally:
            entry.users -= 1
            entry.keep_alive = keep_alive
            if entry.users == 0:
                # The keep-alive clock starts when the last request using the model ends.
                entry.expires = self.clock() + keep_alive
                gone = keep_alive == 0 or entry.doomed
                if gone and self._loaded.get(info.name) is entry:
                    del self._loaded[info.name]

    async def _load(self, info: ModelInfo, keep_alive: float, num_ctx: int | None) -> Loaded:
        context = num_ctx or min(4096, info.context_length)
        while True:
            entry = self._loaded.get(info.name)
            warm = entry is not None and (entry.users or entry.expires > self.clock())
            if entry is not None and warm and entry.context_length == context:
                return entry
            if entry is not None and entry.users == 0:
                del self._loaded[info.name]  # expired, or a new num_ctx: Ollama reloads
            task = self._loading.get(info.name)
            if task is None:
                entry = Loaded(info, context, keep_alive)
                if not self.load_ms:
                    self._loaded[info.name] = entry
                    return entry
                task = asyncio.ensure_future(self._warm_up(entry))
                self._loading[info.name] = task
            # One load serves every request that waits for it, even if its starter leaves.
            await asyncio.shield(task)

    async def _warm_up(self, entry: Loaded) -> None:
        try:
            await asyncio.sleep(self.load_ms / 1000)
            self._loaded[entry.info.name] = entry
        finally:
            self._loading.pop(entry.info.name, None)

    def unload(self, info: ModelInfo) -> None:
        """Drop the model from memory now, or when its last request ends (keep_alive 0)."""
        entry = self._loaded.get(info.name)
        if entry is None:
            return
        if entry.users:
            entry.doomed = True
        else:
            del self._loaded[info.name]

    def running(self) -> list[Loaded]:
        """List the models in memory, the longest to live first (what `/api/ps` shows)."""
        now = self.clock()
        for name in [n for n, e in self._loaded.items() if not e.users and e.expires <= now]:
            del self._loaded[name]
        return sorted(
            self._loaded.values(), key=lambda e: math.inf if e.users else e.expires, reverse=True
        )

    def forget_loaded(self) -> None:
        """Empty the memory, as a restarted host has nothing loaded (nor loading)."""
        for task in self._loading.values():
            task.cancel()
        self._loading.clear()
        self._loaded.clear()

    # -- slots --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(self, info: ModelInfo) -> AsyncIterator[None]:
        """Hold one of the model's `num_parallel` slots; raise Busy if the queue is full."""
        slots = self._slots.get(info.name)
        if slots is None:
            slots = self._slots[info.name] = _Slots(self.num_parallel)
        if slots.free and not slots.waiters:
            slots.free -= 1
        else:
            if self.stats.queued >= self.max_queue:
                raise Busy
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            slots.waiters.append(waiter)
            self.stats.queued += 1
            self._changed.set()
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    slots.release()  # handed a slot while leaving: pass it on
                elif waiter in slots.waiters:  # a release may have skipped it already
                    slots.waiters.remove(waiter)
                raise
            finally:
                self.stats.queued -= 1
                self._changed.set()
        self.stats.in_flight += 1
        self._changed.set()
        try:
            yield
        finally:
            self.stats.in_flight -= 1
            slots.release()
            self._changed.set()

    @contextlib.asynccontextmanager
    async def serving(
        self, info: ModelInfo, keep_alive: float, num_ctx: int | None, *, generation: bool
    ) -> AsyncIterator[None]:
        """One request on the model: a slot of its (`Busy` if the queue is full), then the
        model loaded for it; a generation counts in `stats.generations`."""
        async with self.slot(info):
            if generation:
                self.stats.generations += 1
            async with self.using(info, keep_alive, num_ctx):
                yield

    async def wait_for(self, condition: Callable[[Stats], bool], timeout: float = 5.0) -> None:
        """Wait until `condition(stats)` holds; it is checked whenever a slot changes hands.

        Raises TimeoutError after `timeout` seconds.
        """
        async with asyncio.timeout(timeout):
            while not condition(self.stats):
                self._changed.clear()
                await self._changed.wait()

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no request holds or waits for a slot; TimeoutError after `timeout`."""
        await self.wait_for(lambda s: not s.in_flight and not s.queued, timeout)

    @property
    def token_interval(self) -> float:
        """Return the seconds between two tokens of one answer; 0 means full speed."""
        return 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0

    # -- faults -------------------------------------------------------------------------

    def set_fault(self, fault: Fault) -> None:
        """Arm a fault; earlier faults that match a request take precedence."""
        self._faults.append(_Armed(fault, fault.count))

    def clear_faults(self) -> None:
        """Disarm every fault."""
        self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """Return the armed faults, each `count` being what is left of it."""
        return [msgspec.structs.replace(a.fault, count=a.left) for a in self._faults]

    def take_fault(self, info: ModelInfo) -> Fault | None:
        """Count down and return the first armed fault that applies to `info`, if any."""
        for armed in self._faults:
            fault = armed.fault
            if fault.models is not None and info.name not in map(canonical_name, fault.models):
                continue
            if armed.left is not None:
                armed.left -= 1
                if armed.left <= 0:
                    self._faults.remove(armed)
            self.stats.faults[fault.kind] += 1
            return fault
        return None

    def reset_stats(self) -> None:
        """Zero the counters (what is in flight or queued stays as it is)."""
        self.stats.requests.clear()
        self.stats.faults.clear()
        self.stats.prompts.clear()
        self.stats.generations = 0
