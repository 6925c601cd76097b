"""The answer cache as routers see it: the key, the policy, and two tiers.

A router looks in its own memory first (a bounded LRU of the hottest answers), then in
the shared tier every router sees (a NATS key-value bucket with the cache's TTL). The
cache keeper actor fills the shared tier from executors' answers and keeps Postgres as
the durable copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import OrderedDict

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bus.subjects import model_token
from schemas import (
    Answer,
    CacheMode,
    Kind,
    Options,
    Request,
    decode_answer,
    encode,
    without_routing,
)

__all__ = ["AnswerCache", "cache_key", "flight_key"]

log = structlog.get_logger("actors.cache")

# Options that change how fast an answer comes, not what it says.
_SPEED_ONLY = {"num_thread", "num_gpu", "main_gpu", "num_batch", "use_mmap", "numa"}


def _deterministic(options: Options | None) -> bool:
    return options is not None and (options.temperature == 0 or options.seed is not None)


def cache_key(kind: Kind, model: str, request: Request) -> str | None:
    """The cache key of `request` on `model`, or None when it may not be cached.

    The key hashes the kind, the model and the canonical request: everything that shapes
    the answer (prompt or messages, system, format, images, options), and nothing that
    does not (request id, routing fields, keep_alive, speed-only options).
    """
    mode = request.cache
    if mode == CacheMode.OFF:
        return None
    if mode == CacheMode.AUTO and kind is not Kind.EMBED and not _deterministic(request.options):
        return None
    options = request.options
    if options is not None:
        options = msgspec.structs.replace(options, **dict.fromkeys(_SPEED_ONLY))
    canonical = without_routing(request, model=model, keep_alive=None, stream=True, options=options)
    digest = hashlib.sha256(encode(canonical)).hexdigest()
    return f"{model_token(model)}.{digest}"


def flight_key(key: str) -> str:
    """Where the request generating the answer of `key` is named while it runs."""
    return f"{key}.flight"


class AnswerCache:
    """A router's reads of the cache: memory first, then the shared tier."""

    def __init__(
        self, kv: KeyValue, *, memory_entries: int, ttl_s: float, stale_s: float = 600.0
    ) -> None:
        self._kv = kv
        self._stale_s = stale_s
        self._max = memory_entries
        self._ttl = ttl_s
        self._memory: OrderedDict[str, tuple[float, Answer]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    async def get(self, key: str) -> Answer | None:
        """The cached answer under `key`, or None."""
        now = time.monotonic()
        if (held := self._memory.get(key)) is not None:
            expires, answer = held
            if expires > now:
                self._memory.move_to_end(key)
                self.hits += 1
                return answer
            del self._memory[key]
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            self.misses += 1
            return None
        except (nats.errors.Error, OSError) as exc:
            log.warning("cache_unreachable", error=repr(exc))
            self.misses += 1
            return None
        try:
            answer = decode_answer(entry.value or b"")
        except msgspec.DecodeError:
            log.warning("cache_entry_unreadable", key=key)
            self.misses += 1
            return None
        self.hits += 1
        self._remember(key, answer)
        return answer

    async def lead(self, key: str, request_id: str) -> str | None:
        """Claim the generation of `key` for `request_id`: None if this request leads it,
        else the id of the request already generating the same answer (single-flight).

        The claim is a key-value `create`, atomic across every router. A claim older than
        `stale_s` (its leader died before finishing) is taken over.
        """
        flight = flight_key(key)
        value = f"{request_id} {time.time()}".encode()
        for _ in range(3):
            try:
                await self._kv.create(flight, value)
                return None
            except (KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                pass  # someone leads already
            except (nats.errors.Error, OSError) as exc:
                log.warning("single_flight_unavailable", error=repr(exc))
                return None  # generate independently rather than fail
            try:
                entry = await self._kv.get(flight)
            except KeyNotFoundError:
                continue  # the leader finished meanwhile: try to lead
            leader, _, since = (entry.value or b"").decode().partition(" ")
            if leader and time.time() - float(since or 0) < self._stale_s:
                return leader
            with contextlib.suppress(nats.errors.Error, KeyWrongLastSequenceError):
                await self._kv.delete(flight, last=entry.revision)
        return None

    async def step_down(self, key: str) -> None:
        """Release the claim on `key` (its leader failed or its answer is stored)."""
        with contextlib.suppress(nats.errors.Error, OSError):
            await self._kv.delete(flight_key(key))

    def _remember(self, key: str, answer: Answer) -> None:
        if self._max <= 0:
            return
        self._memory[key] = (time.monotonic() + self._ttl, answer)
        self._memory.move_to_end(key)
        while len(self._memory) > self._max:
            self._memory.popitem(last=False)

    def held(self, model: str | None) -> list[str]:
        """The keys memory holds of `model` (None: every model)."""
        prefix = f"{model_token(model)}." if model is not None else ""
        return [k for k in self._memory if k.startswith(prefix)]

    def forget(self, model: str | None) -> int:
        """Drop what memory holds of `model` (None: everything); return how many."""
        keys = self.held(model)
        for k in keys:
            del self._memory[k]
        return len(keys)
