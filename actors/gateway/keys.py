"""API keys: who may use the gateway, which models, which routes, at what rate.

Policy and state, no I/O of their own: the active keys in memory (the SHA-256 of each
secret -> its key, so admitting a request is one dictionary lookup and never a database
call), the guard that admits each request, and what a request was granted. The gateway
loads the keys from Postgres (`actors.gateway.keystore`, `actors.gateway.keeper`) and
charges each key's limits in the bucket the routers use (`bus.limits`, `apikey.<id>.*`).

The rules, in order: keys that cannot be read (Postgres unreachable for longer than
`gateway.keys_max_age_s`) refuse every request with 503, never serve it open; with no
key at all the gateway is open, to clients on its own machine only unless
`gateway.allow_open`; with at least one key every route needs `Authorization: Bearer`.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog

from actors.gateway.errors import Forbidden, Unauthorized
from actors.gateway.http import Request
from bus.errors import OllameshError, Unavailable, quote
from bus.limits import Limit, SharedLimits
from bus.subjects import canonical_model

__all__ = [
    "Key",
    "KeyGrant",
    "KeyGuard",
    "KeyRing",
    "Minted",
    "digest",
    "is_loopback",
    "mint",
]

log = structlog.get_logger("actors.gateway")

# Every secret starts so, which tells a leaked one for what it is (secret scanners).
_SECRET_PREFIX = "olm_"
# The characters of a secret listed to recognise it by: the prefix and 8 of its 43.
_SHOWN = len(_SECRET_PREFIX) + 8
# A token a request counts as per four bytes of its body, until the answer says.
_BYTES_PER_TOKEN = 4
# How soon a client refused for unreadable keys may try again.
_UNREADABLE_RETRY_MS = 1000
_BEARER = b"bearer "


class Minted(NamedTuple):
    """A new key's id and secret, what is stored of the secret, and what is shown of it."""

    key_id: str
    secret: str
    digest: bytes
    prefix: str


def digest(secret: str | bytes) -> bytes:
    """What is stored of a secret: its SHA-256. The secret is 256 random bits, so nothing
    slower is needed; no one can guess it to compare against the digest."""
    return hashlib.sha256(secret.encode() if isinstance(secret, str) else secret).digest()


def mint() -> Minted:
    """A new key: a random id and a random secret of 256 bits."""
    secret = _SECRET_PREFIX + secrets.token_urlsafe(32)
    return Minted(secrets.token_hex(8), secret, digest(secret), secret[:_SHOWN])


@functools.lru_cache(maxsize=4096)  # asked per request without keys: clients are few
def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or `localhost`) is this machine only."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:  # a name, or no address at all (""): not known to be loopback
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@dataclass(frozen=True)
class Key:
    """An active key as the gateway holds it (never its secret)."""

    key_id: str
    name: str
    digest: bytes
    limit: Limit
    # Canonical names (`llama3` is `llama3:latest`, a role `fast` is `fast:latest`); None: all.
    models: frozenset[str] | None = None
    admin: bool = False

    @classmethod
    def of(
        cls,
        key_id: str,
        name: str,
        secret_digest: bytes,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        models: Iterable[str] | None = None,
        admin: bool = False,
    ) -> Key:
        limit = Limit(f"apikey.{key_id}", f"API key {name!r}", rpm, tpm)
        allowed = None if models is None else frozenset(canonical_model(m) for m in models)
        return cls(key_id, name, secret_digest, limit, allowed, admin)


class KeyRing:
    """The active keys by digest, and whether they are recent enough to be trusted.

    `drop` applies a revocation heard before the next read of the database; a read that
    started before the drop does not bring the key back.
    """

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._by_digest: dict[bytes, Key] = {}
        self._loaded_at: float | None = None
        self._dropped: dict[str, float] = {}  # key id -> when its revocation was heard
        # Key id -> when it was last used (unix time), not yet written to the database.
        self.used: dict[str, float] = {}

    def now(self) -> float:
        return self._clock()

    def replace(self, keys: Iterable[Key], read_at: float) -> None:
        """The keys a read of the database that started at `read_at` found active."""
        self._dropped = {k: at for k, at in self._dropped.items() if at >= read_at}
        self._by_digest = {k.digest: k for k in keys if k.key_id not in self._dropped}
        self._loaded_at = read_at

    def drop(self, key_id: str) -> None:
        """A key was revoked: refuse it from now on."""
        self._dropped[key_id] = self._clock()
        self._by_digest = {d: k for d, k in self._by_digest.items() if k.key_id != key_id}

    @property
    def fresh(self) -> bool:
        """Whether the keys were read recently enough to act on."""
        loaded = self._loaded_at
        return loaded is not None and self._clock() - loaded <= self.max_age_s

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, secret: bytes) -> Key | None:
        return self._by_digest.get(digest(secret))

    def take_used(self) -> dict[str, float]:
        """The last uses not yet written, handed over (and forgotten here)."""
        used, self.used = self.used, {}
        return used


@dataclass
class KeyGrant:
    """What the guard let one request do: its key's models, and its tokens to settle."""

    key: Key
    charged: int  # tokens charged at admission, an estimate
    limits: SharedLimits = field(repr=False)
    _settled: bool = field(default=False, repr=False)

    def allow(self, model: str | None) -> None:
        """Raise `Forbidden` unless the key may use `model` (compared canonically: a role
        alias counts as its own name, not as the model it stands for)."""
        allowed = self.key.models
        if allowed is None:
            return
        if not model:
            names = ", ".join(sorted(allowed))
            raise Forbidden(f"{self.key.limit.name} may use only {names}: name one of them")
        if canonical_model(model) not in allowed:
            raise Forbidden(f"{self.key.limit.name} may not use {quote(model)}")

    async def spent(self, tokens: int) -> None:
        """Settle the key's tokens per minute with what the request used (once)."""
        if self._settled or self.key.limit.tpm is None:
            return
        self._settled = True
        try:
            await self.limits.settle(self.key.limit, max(tokens, 0) - self.charged)
        except OllameshError as exc:  # the answer is given: a lost settlement is logged
            log.warning("key_tokens_not_settled", key_id=self.key.key_id, error=repr(exc))


def _bearer(headers: dict[bytes, bytes]) -> bytes | None:
    value = headers.get(b"authorization", b"")
    if value[: len(_BEARER)].lower() != _BEARER:
        return None
    return value[len(_BEARER) :].strip() or None


def _estimate(headers: dict[bytes, bytes]) -> int:
    length = headers.get(b"content-length", b"")
    return int(length) // _BYTES_PER_TOKEN if length.isdigit() else 0


class KeyGuard:
    """Admits each request by the rules above; `ring` None: the gateway has no database,
    so there are no keys."""

    def __init__(self, ring: KeyRing | None, limits: SharedLimits, *, allow_open: bool) -> None:
        self.ring = ring
        self.limits = limits
        self.allow_open = allow_open

    @property
    def required(self) -> bool | None:
        """Whether requests need a key now (None: the keys cannot be read)."""
        if self.ring is None:
            return False
        return len(self.ring) > 0 if self.ring.fresh else None

    async def __call__(self, req: Request, admin: bool) -> KeyGrant | None:
        ring = self.ring
        if ring is not None and not ring.fresh:
            raise Unavailable(
                "the gateway cannot read its API keys (their database is unreachable), so it"
                " answers no request until it can",
                retry_after_ms=_UNREADABLE_RETRY_MS,
            )
        if ring is None or not len(ring):
            if not self.allow_open and not is_loopback(req.client):
                raise Forbidden(
                    "this gateway has no API keys, so it serves only clients on its own"
                    " machine: create a key (ollamesh keys create NAME), or set"
                    " gateway.allow_open = true"
                )
            return None
        secret = _bearer(req.headers)
        if secret is None:
            raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
        key = ring.find(secret)
        if key is None:
            raise Unauthorized("the API key is not valid (unknown, or revoked)")
        if admin and not key.admin:
            raise Forbidden(f"{key.limit.name} may not use {req.method} {req.path}: an admin route")
        tokens = _estimate(req.headers) if key.limit.tpm is not None else 0
        if key.limit.limited:  # no wait: an HTTP client is told when to come back
            await self.limits.reserve(key.limit, tokens, 0.0)
        ring.used[key.key_id] = time.time()
        return KeyGrant(key, tokens, self.limits)
