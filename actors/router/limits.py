"""Per-model rate limits (requests and tokens per minute), shared by every router.

Each limit is a GCRA (generic cell rate algorithm) whose one number of state, the
theoretical arrival time (TAT), lives in a JetStream key-value bucket and is changed only
by compare-and-set, so any number of router processes share one budget. TATs are wall
clock seconds: routers on different machines need their clocks in sync (NTP) to agree.
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

__all__ = ["RateLimiter"]

log = structlog.get_logger("actors.router.limits")

# A limit of L units per minute lets L units through at once, then one every 60/L seconds.
WINDOW_S = 60.0
# Float sums of 60/L drift by ulps; a wait this small counts as none.
_EPSILON_S = 1e-6
# Compare-and-set attempts before giving up: each failure means another router wrote first.
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


class RateLimiter:
    """Reserve and settle requests and tokens per minute against a shared KV bucket."""

    def __init__(
        self,
        kv: KeyValue,
        limits: Mapping[str, ModelLimits],
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Keyed by canonical model name: the router resolves roles before calling.
        self._kv = kv
        self._limits = {
            model: lim
            for model, lim in limits.items()
            if lim.rpm is not None or lim.tpm is not None
        }
        self._clock = clock
        # One reservation per model at a time in this process: CAS then only races other
        # routers, instead of every concurrent request here retrying against the others.
        self._locks = {model: asyncio.Lock() for model in self._limits}

    def limited(self, model: str) -> bool:
        """Whether `model` has any limit."""
        return model in self._limits

    async def reserve(self, model: str, tokens: int, max_wait_s: float) -> float:
        """Reserve one request and `tokens` tokens; return the seconds left to wait.

        Does not sleep: the caller waits the returned time (0.0 when admitted at once)
        before enqueueing. Raises `RateLimited` when either limit would need a wait over
        `max_wait_s`, reserving nothing; `BadRequest` when `tokens` exceeds a minute's
        allowance; `Unavailable` when NATS does not answer.
        """
        lim = self._limits.get(model)
        if lim is None:
            return 0.0
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        if lim.tpm is not None and tokens > lim.tpm:
            raise BadRequest(
                f"the request needs about {tokens} tokens; {model} allows {lim.tpm} per minute"
            )
        token = model_token(model)
        charges: list[_Charge] = []
        if lim.rpm is not None:
            charges.append(_Charge(f"{token}.rpm", 1, lim.rpm, "requests"))
        if lim.tpm is not None:
            charges.append(_Charge(f"{token}.tpm", tokens, lim.tpm, "tokens"))

        async with self._locks[model]:
            return await self._reserve(model, charges, max_wait_s)

    async def _reserve(self, model: str, charges: list[_Charge], max_wait_s: float) -> float:
        # Decide from the current values first, so a refusal writes nothing at all.
        states = [await self._read(c.key) for c in charges]
        now = self._clock()
        steps = [
            gcra(s.tat, now, c.cost, c.per_minute, max_wait_s)
            for c, s in zip(charges, states, strict=True)
        ]
        if not all(s.admitted for s in steps):
            raise _refusal(model, charges, steps)

        # Commit each limit by compare-and-set. A lost race re-decides against what the
        # other router wrote, so no limit ever admits beyond `max_wait_s`. Two keys cannot
        # change atomically: if the second limit refuses after the first was committed,
        # the first is refunded, which other routers may briefly have seen as taken
        # (they err towards refusing, never towards admitting too much).
        committed: list[_Charge] = []
        waits: list[float] = []
        for charge, state in zip(charges, states, strict=True):
            step = await self._cas(charge, charge.cost, max_wait_s, state)
            if not step.admitted:
                for done in committed:
                    await self._cas(done, -done.cost, None, None)
                raise _refusal(model, [charge], [step])
            committed.append(charge)
            waits.append(step.wait)
        return max(waits)

    async def release(self, model: str, tokens: int) -> None:
        """Give back a reservation whose request never ran (refused, or a duplicate)."""
        lim = self._limits.get(model)
        if lim is None:
            return
        token = model_token(model)
        charges = []
        if lim.rpm is not None:
            charges.append(_Charge(f"{token}.rpm", 1, lim.rpm, "requests"))
        if lim.tpm is not None and tokens:
            charges.append(_Charge(f"{token}.tpm", tokens, lim.tpm, "tokens"))
        async with self._locks[model]:
            for charge in charges:
                await self._cas(charge, -charge.cost, None, None)

    async def settle(self, model: str, extra_tokens: int) -> None:
        """Charge (or, when negative, refund) the tokens a request used beyond its estimate."""
        lim = self._limits.get(model)
        if lim is None or lim.tpm is None or extra_tokens == 0:
            return
        charge = _Charge(f"{model_token(model)}.tpm", extra_tokens, lim.tpm, "tokens")
        async with self._locks[model]:
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
                state = None  # Another router wrote first: read its value and decide again.
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


def _refusal(model: str, charges: list[_Charge], steps: list[Step]) -> RateLimited:
    """The error for a request that would wait too long, naming the limits in the way."""
    wait = max(s.wait for s in steps)
    over = ", ".join(
        f"{c.per_minute} {c.unit}/min"
        for c, s in zip(charges, steps, strict=True)
        if not s.admitted
    )
    return RateLimited(
        f"{model} is over its rate limit ({over}); retry in {wait:.1f}s",
        # Less the tolerance, so float noise in `wait` never adds a millisecond.
        retry_after_ms=math.ceil((wait - _EPSILON_S) * 1000),
    )
