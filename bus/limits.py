"""Rate limits (requests and tokens per minute) shared by every process that charges them:
a model's, which every router charges, and an API key's, which every gateway charges.

Each limit is a GCRA (generic cell rate algorithm) whose one number of state, the
theoretical arrival time (TAT), lives in a JetStream key-value bucket and is changed only
by compare-and-set, so any number of processes share one budget. TATs are wall clock
seconds: processes on different machines need their clocks in sync (NTP) to agree.

`SharedLimits` charges any `Limit` it is given (a stem in the bucket, a name for errors,
rpm and tpm), so a set of limits that changes at run time (API keys) needs no state of
its own; `RateLimiter` is the routers' fixed set of limits per model on top of it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import nats.errors
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bus.config import ModelLimits
from bus.errors import BadRequest, RateLimited, Unavailable
from bus.subjects import model_token

__all__ = ["Limit", "RateLimiter", "SharedLimits", "Step", "gcra"]

log = structlog.get_logger("bus.limits")

# A limit of L units per minute lets L units through at once, then one every 60/L seconds.
WINDOW_S = 60.0
# Float sums of 60/L drift by ulps; a wait this small counts as none.
_EPSILON_S = 1e-6
# Compare-and-set attempts before giving up: each failure means another process wrote first.
_CAS_TRIES = 20


class Step(NamedTuple):
    """The outcome of charging a cost to one limit."""

    tat: float  # The state to store; unchanged when refused.
    wait: float  # Seconds until the cost fits (0.0: at once); when refused, the retry-after.
    admitted: bool


def gcra(
    tat: float, now: float, cost: float, per_minute: int, max_wait: float | None = None
) -> Step:
    """Charge `cost` units to a limit of `per_minute` units per minute whose state is `tat`.

    With `max_wait` this is an admission: refused (state unchanged) when the cost would
    fit only after more than `max_wait` seconds, and a `BadRequest` when it can never fit.
    Without, it is a charge or refund that happens regardless (settling, rollback); a
    refund never moves the state below `now`, so it cannot bank unused capacity.
    """
    interval = WINDOW_S / per_minute
    if max_wait is not None and cost > per_minute:
        raise BadRequest(f"a cost of {cost:g} can never fit a limit of {per_minute} per minute")
    # Positive cost: max(tat, now) + c*T.  Negative cost: max(now, tat + c*T).
    new_tat = max(tat + cost * interval, now + max(cost * interval, 0.0))
    wait = new_tat - now - WINDOW_S
    wait = 0.0 if wait <= _EPSILON_S else wait
    if max_wait is not None and wait > max_wait + _EPSILON_S:
        return Step(tat, wait, admitted=False)
    return Step(new_tat, wait, admitted=True)


class _Charge(NamedTuple):
    """One limit a request counts against."""

    key: str
    cost: int
    per_minute: int
    unit: str


class _State(NamedTuple):
    tat: float
    revision: int | None  # None: the key does not exist (yet, or any more).


class Limit(NamedTuple):
    """One budget: where its state lives in the bucket (`<stem>.rpm`, `<stem>.tpm`), what
    errors call it, and its limits per minute (None: not limited in that unit)."""

    stem: str
    name: str
    rpm: int | None = None
    tpm: int | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


def _charges(limit: Limit, tokens: int, *, zero_tokens: bool) -> list[_Charge]:
    """What a request counts against: one request, and its tokens (unless there are none
    and `zero_tokens` is false: a refund of nothing)."""
    charges: list[_Charge] = []
    if limit.rpm is not None:
        charges.append(_Charge(f"{limit.stem}.rpm", 1, limit.rpm, "requests"))
    if limit.tpm is not None and (tokens or zero_tokens):
        charges.append(_Charge(f"{limit.stem}.tpm", tokens, limit.tpm, "tokens"))
    return charges


class SharedLimits:
    """Reserve and settle requests and tokens per minute of any `Limit`, against a bucket
    every process charging the same limits shares."""

    def __init__(self, kv: KeyValue, clock: Callable[[], float] = time.time) -> None:
        self._kv = kv
        self._clock = clock
        # One reservation per limit at a time in this process: CAS then only races other
        # processes, instead of every concurrent request here retrying against the others.
        # One lock per limit ever charged here: a few bytes each, for as many as there are.
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, limit: Limit) -> asyncio.Lock:
        lock = self._locks.get(limit.stem)
        if lock is None:
            lock = self._locks[limit.stem] = asyncio.Lock()
        return lock

    async def reserve(self, limit: Limit, tokens: int, max_wait_s: float) -> float:
        """Reserve one request and `tokens` tokens; return the seconds left to wait.

        Does not sleep: the caller waits the returned time (0.0 when admitted at once)
        before going on. Raises `RateLimited` when either limit would need a wait over
        `max_wait_s`, reserving nothing; `BadRequest` when `tokens` exceeds a minute's
        allowance; `Unavailable` when NATS does not answer.
        """
        if not limit.limited:
            return 0.0
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if limit.tpm is not None and tokens > limit.tpm:
            raise BadRequest(
                f"the request needs about {tokens} tokens; {limit.name} allows {limit.tpm}"
                " per minute"
            )
        charges = _charges(limit, tokens, zero_tokens=True)
        async with self._lock(limit):
            return await self._reserve(limit.name, charges, max_wait_s)

    async def _reserve(self, name: str, charges: list[_Charge], max_wait_s: float) -> float:
        # Decide from the current values first, so a refusal writes nothing at all.
        states = [await self._read(c.key) for c in charges]
        now = self._clock()
        steps = [
            gcra(s.tat, now, c.cost, c.per_minute, max_wait_s)
            for c, s in zip(charges, states, strict=True)
        ]
        if not all(s.admitted for s in steps):
            raise _refusal(name, charges, steps)

        # Commit each limit by compare-and-set. A lost race re-decides against what the
        # other process wrote, so no limit ever admits beyond `max_wait_s`. Two keys cannot
        # change atomically: if the second limit refuses after the first was committed,
        # the first is refunded, which other processes may briefly have seen as taken
        # (they err towards refusing, never towards admitting too much).
        committed: list[_Charge] = []
        waits: list[float] = []
        for charge, state in zip(charges, states, strict=True):
            step = await self._cas(charge, charge.cost, max_wait_s, state)
            if not step.admitted:
                for done in committed:
                    await self._cas(done, -done.cost, None, None)
                raise _refusal(name, [charge], [step])
            committed.append(charge)
            waits.append(step.wait)
        return max(waits)

    async def release(self, limit: Limit, tokens: int) -> None:
        """Give back a reservation whose request never ran (refused, or a duplicate)."""
        if not limit.limited:
            return
        async with self._lock(limit):
            for charge in _charges(limit, tokens, zero_tokens=False):
                await self._cas(charge, -charge.cost, None, None)

    async def settle(self, limit: Limit, extra_tokens: int) -> None:
        """Charge (or, when negative, refund) the tokens a request used beyond its estimate."""
        if limit.tpm is None or extra_tokens == 0:
            return
        charge = _Charge(f"{limit.stem}.tpm", extra_tokens, limit.tpm, "tokens")
        async with self._lock(limit):
            await self._cas(charge, extra_tokens, None, None)

    async def _cas(
        self, charge: _Charge, cost: int, max_wait: float | None, state: _State | None
    ) -> Step:
        """Apply `cost` to one limit by compare-and-set, starting from `state` if known."""
        for _ in range(_CAS_TRIES):
            if state is None:
                state = await self._read(charge.key)
            step = gcra(state.tat, self._clock(), cost, charge.per_minute, max_wait)
            if not step.admitted:
                return step
            value = repr(step.tat).encode()
            try:
                if state.revision is None:
                    await self._kv.create(charge.key, value)
                else:
                    await self._kv.update(charge.key, value, last=state.revision)
            except KeyWrongLastSequenceError:
                state = None  # Another process wrote first: read its value and decide again.
                continue
            except nats.errors.Error as exc:
                raise Unavailable(f"rate limit store failed: {exc}") from exc
            return step
        raise Unavailable(f"rate limit {charge.key} stayed contended for {_CAS_TRIES} tries")

    async def _read(self, key: str) -> _State:
        """The stored TAT of `key` and its revision (0.0 and None when absent)."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return _State(0.0, None)
        except nats.errors.Error as exc:
            raise Unavailable(f"rate limit store failed: {exc}") from exc
        try:
            tat = float((entry.value or b"").decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            tat = math.nan
        if not math.isfinite(tat):
            # Read as "no reservation": the next write (at this revision) heals it.
            log.warning("rate_limit_value_invalid", key=key, value=entry.value)
            tat = 0.0
        return _State(tat, entry.revision)


class RateLimiter:
    """The routers' limits per model, each model's budget shared by every router."""

    def __init__(
        self,
        kv: KeyValue,
        limits: Mapping[str, ModelLimits],
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Keyed by canonical model name: the router resolves roles before calling.
        self._shared = SharedLimits(kv, clock)
        self._limits = {
            model: Limit(model_token(model), model, lim.rpm, lim.tpm)
            for model, lim in limits.items()
            if lim.rpm is not None or lim.tpm is not None
        }

    def limited(self, model: str) -> bool:
        """Whether `model` has any limit."""
        return model in self._limits

    async def reserve(self, model: str, tokens: int, max_wait_s: float) -> float:
        """Reserve one request and `tokens` tokens of `model` (see `SharedLimits.reserve`)."""
        limit = self._limits.get(model)
        return 0.0 if limit is None else await self._shared.reserve(limit, tokens, max_wait_s)

    async def release(self, model: str, tokens: int) -> None:
        """Give back a reservation whose request never ran (refused, or a duplicate)."""
        if (limit := self._limits.get(model)) is not None:
            await self._shared.release(limit, tokens)

    async def settle(self, model: str, extra_tokens: int) -> None:
        """Charge (or, when negative, refund) the tokens a request used beyond its estimate."""
        if (limit := self._limits.get(model)) is not None:
            await self._shared.settle(limit, extra_tokens)


def _refusal(name: str, charges: list[_Charge], steps: list[Step]) -> RateLimited:
    """The error for a request that would wait too long, naming the limits in the way."""
    wait = max(s.wait for s in steps)
    over = ", ".join(
        f"{c.per_minute} {c.unit}/min"
        for c, s in zip(charges, steps, strict=True)
        if not s.admitted
    )
    return RateLimited(
        f"{name} is over its rate limit ({over}); retry in {wait:.1f}s",
        # Less the tolerance, so float noise in `wait` never adds a millisecond.
        retry_after_ms=math.ceil((wait - _EPSILON_S) * 1000),
    )
