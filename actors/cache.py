"""The answer cache as routers see it: the key, the policy, and two tiers.

A router looks in its own memory first (a bounded LRU of the hottest answers), then in
the shared tier every router sees (a NATS key-value bucket with the cache's TTL). The
cache keeper actor fills the shared tier from executors' answers and keeps Postgres as
the durable copy.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

import msgspec
import nats.errors
import structlog
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from bus.subjects import model_token
from schemas import Answer, CacheMode, Kind, Options, Priority, Request, decode_answer, encode

__all__ = ["AnswerCache", "cache_key"]

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
    canonical = msgspec.structs.replace(
        request,
        model=model,
        request_id=None,
        role=None,
        task=None,
        deadline_ms=None,
        fallback=True,
        priority=Priority.INTERACTIVE,
        cache=CacheMode.AUTO,
        keep_alive=None,
        stream=True,
        options=options,
    )
    digest = hashlib.sha256(encode(canonical)).hexdigest()
    return f"{model_token(model)}.{digest}"


class AnswerCache:
    """A router's reads of the cache: memory first, then the shared tier."""

    def __init__(self, kv: KeyValue, *, memory_entries: int, ttl_s: float) -> None:
        self._kv = kv
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

    def _remember(self, key: str, answer: Answer) -> None:
        if self._max <= 0:
            return
        self._memory[key] = (time.monotonic() + self._ttl, answer)
        self._memory.move_to_end(key)
        while len(self._memory) > self._max:
            self._memory.popitem(last=False)

    def forget(self, model: str | None) -> int:
        """Drop what memory holds of `model` (None: everything); return how many."""
        if model is None:
            count = len(self._memory)
            self._memory.clear()
            return count
        prefix = f"{model_token(model)}."
        keys = [k for k in self._memory if k.startswith(prefix)]
        for k in keys:
            del self._memory[k]
        return len(keys)
