"""The SDK's API key calls (`client.keys`): create, list and revoke the HTTP gateway's
keys. Any gateway with a database answers; every gateway applies a change at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS

from bus.errors import BadRequest
from bus.rpc import call
from bus.subjects import Subjects
from schemas import Error, encode
from schemas.keys import (
    KeyCreate,
    KeyCreated,
    KeyInfo,
    KeyList,
    KeyRevoke,
    KeyRevoked,
    Keys,
)

__all__ = ["ApiKeys"]

_decode_created = msgspec.json.Decoder(KeyCreated | Error).decode
_decode_keys = msgspec.json.Decoder(Keys | Error).decode
_decode_revoked = msgspec.json.Decoder(KeyRevoked | Error).decode
_SERVICE = "gateway with a database"
# Each verb is one statement in Postgres: an answer takes far less.
_TIMEOUT_S = 30.0
T = TypeVar("T")


class ApiKeys:
    """The HTTP gateway's API keys."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float = _TIMEOUT_S) -> None:
        self._nc = nc
        self._subjects = subjects
        self._timeout = min(timeout, _TIMEOUT_S)

    async def create(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        models: list[str] | None = None,
        admin: bool = False,
    ) -> KeyCreated:
        """A new key: its own requests and tokens per minute, the models (or role aliases)
        it may name (None: all), whether it may use admin routes. The answer's `secret` is
        the only time the secret is given: it is stored as a digest."""
        fields = {"name": name, "rpm": rpm, "tpm": tpm, "models": models, "admin": admin}
        return await self._ask("create", KeyCreate, fields, _decode_created)

    async def list(self, *, revoked: bool = True) -> list[KeyInfo]:
        """Every key, newest first (`revoked=False`: the active ones only); no secrets."""
        reply = await self._ask("list", KeyList, {"revoked": revoked}, _decode_keys)
        return reply.keys

    async def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key on every gateway; revoking one revoked before changes nothing."""
        reply = await self._ask("revoke", KeyRevoke, {"key_id": key_id}, _decode_revoked)
        return reply.key

    async def _ask(
        self,
        verb: str,
        request_type: type[msgspec.Struct],
        fields: dict[str, Any],
        decode: Callable[[bytes], T | Error],
    ) -> T:
        try:  # a bad field is said before anything is sent
            request = msgspec.convert(fields, request_type)
        except msgspec.ValidationError as exc:
            raise BadRequest(f"invalid keys.{verb} request: {exc}") from exc
        subject = self._subjects.keys(verb)
        return await call(
            self._nc, subject, encode(request), decode, self._timeout, service=_SERVICE
        )
