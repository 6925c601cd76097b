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
from schemas import CacheMode, Kind, Options, Request, encode, without_routing
from schemas.internal import Answer, decode_answer

__all__ = ["AnswerCache", "cache_key"]

log = structlog.get_logger("actors.router.cache")

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


# A shared-tier value that is not an answer: "<marker> <request id> <unix time>", put
# there by the request generating the answer (single-flight).
_MARKER = b"generating "


class AnswerCache:
    """A router's view of the cache: its memory first, then the shared tier, where a
    request generating an answer also leaves its mark for identical ones to follow."""

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

    async def claim(self, key: str, request_id: str) -> Answer | str | None:
        """The cached answer of `key`; or the id of the request generating it now (follow
        it: single-flight); or None, and this request is to generate it.

        Memory first; then one key-value `create`, atomic across every router, puts this
        request's marker under the key unless something is there already: a miss costs
        one round trip. A marker older than `stale_s` (its request died) is taken over.
        """
        now = time.monotonic()
        if (held := self._memory.get(key)) is not None:
            expires, answer = held
            if expires > now:
                self._memory.move_to_end(key)
                self.hits += 1
                return answer
            del self._memory[key]
        marker = _MARKER + f"{request_id} {time.time()}".encode()
        for _ in range(3):
            try:
                await self._kv.create(key, marker)
                self.misses += 1
                return None
            except (KeyWrongLastSequenceError, nats.js.errors.BadRequestError):
                pass  # there is something under the key
            except (nats.errors.Error, OSError) as exc:
                log.warning("cache_unreachable", error=repr(exc))
                return None  # generate independently rather than fail
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                continue  # gone meanwhile (purged, or its generation failed): try again
            except (nats.errors.Error, OSError) as exc:
                log.warning("cache_unreachable", error=repr(exc))
                return None
            value = entry.value or b""
            if value.startswith(_MARKER):
                leader, _, since = value[len(_MARKER) :].decode().partition(" ")
                if time.time() - float(since or 0) < self._stale_s:
                    return leader
                with contextlib.suppress(nats.errors.Error, KeyWrongLastSequenceError):
                    await self._kv.delete(key, last=entry.revision)
                continue
            try:
                answer = decode_answer(value)
            except msgspec.DecodeError:
                log.warning("cache_entry_unreadable", key=key)
                return None
            self.hits += 1
            self._remember(key, answer)
            return answer
        return None

    async def release(self, key: str) -> None:
        """Take this request's marker off `key`: its generation failed before any host."""
        with contextlib.suppress(nats.errors.Error, OSError):
            await self._kv.delete(key)

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
