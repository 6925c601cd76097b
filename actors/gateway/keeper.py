"""Keeps a gateway's keys current and serves their management.

`<prefix>.v1.keys.{create,list,revoke}` (request/reply, one queue group for every
gateway with a database): each change is made in Postgres, applied here before the
reply, and announced on `<prefix>.v1.events.keys`, on which every gateway drops a revoked
key at once and reads the keys again. Besides, each gateway reads them every
`gateway.keys_reload_s` (every second while they cannot be read), and writes when its
keys were last used.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from actors.gateway.keys import KeyRing, mint
from actors.gateway.keystore import KeyStore
from actors.store.sink import DOWN, unreachable_as
from bus.errors import BadRequest, Unavailable
from bus.rpc import decode_body
from bus.subjects import Subjects
from schemas import encode
from schemas.keys import (
    KeyChange,
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyRevoke,
    KeyRevoked,
    Keys,
    KeysChanged,
)

__all__ = ["KeyKeeper"]

_DATABASE = "the API keys' database"
# While the keys cannot be read, they are tried again this often.
_RETRY_S = 1.0
_decode_changed = msgspec.json.Decoder(KeysChanged).decode


class KeyKeeper:
    """The ring's keys read from `store`, again on every change and every `reload_s`."""

    def __init__(
        self, nc: NATS, subjects: Subjects, store: KeyStore, ring: KeyRing, reload_s: float,
        log: Any,
    ) -> None:  # fmt: skip
        self._nc = nc
        self._subjects = subjects
        self.store = store
        self.ring = ring
        self._reload_s = reload_s
        self._log = log
        self._changed = asyncio.Event()

    async def load(self) -> bool:
        """Read the active keys into the ring; False (and logged) when they cannot be read."""
        read_at = self.ring.now()
        try:
            with unreachable_as(_DATABASE):
                keys = await self.store.active()
        except Unavailable as exc:
            self._log.warning("keys_unreadable", error=exc.message, fresh=self.ring.fresh)
            return False
        self.ring.replace(keys, read_at)
        return True

    async def refresh(self) -> None:
        """Read the keys again on every change and every `reload_s`; never returns."""
        loaded = self.ring.loaded
        while True:
            wait = self._reload_s if loaded else min(_RETRY_S, self._reload_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
            self._changed.clear()
            await self.flush()
            loaded = await self.load()

    async def flush(self) -> None:
        """Write when keys were last used; kept for the next time if that fails."""
        used = self.ring.take_used()
        if not used:
            return
        try:
            await self.store.touch(used)
        except DOWN as exc:
            self._log.info("keys_use_not_written", error=repr(exc))
            for key_id, at in used.items():
                self.ring.used[key_id] = max(at, self.ring.used.get(key_id, at))

    def handlers(self) -> dict[str, Any]:
        """The request handlers by verb."""
        return {"create": self.create, "list": self.list, "revoke": self.revoke}

    async def create(self, msg: Msg) -> bytes:
        ask = decode_body(KeyCreate, msg.data, "keys.create")
        minted = mint()
        with unreachable_as(_DATABASE):
            info = await self.store.create(minted, ask)
        # Never the secret: it is in the reply alone.
        self._log.info("key_created", key_id=info.key_id, name=info.name, prefix=info.prefix)
        await self._announce(info.key_id, "created")
        return encode(KeyCreated(key=info, secret=minted.secret))

    async def list(self, msg: Msg) -> bytes:
        ask = decode_body(KeyList, msg.data, "keys.list")
        with unreachable_as(_DATABASE):
            found = await self.store.every(ask.revoked)
        return encode(Keys(keys=found))

    async def revoke(self, msg: Msg) -> bytes:
        ask = decode_body(KeyRevoke, msg.data, "keys.revoke")
        with unreachable_as(_DATABASE):
            info = await self.store.revoke(ask.key_id)
        if info is None:
            raise BadRequest(f"no API key {ask.key_id}")
        self._log.info("key_revoked", key_id=info.key_id, name=info.name)
        self.ring.drop(info.key_id)
        await self._announce(info.key_id, "revoked")
        return encode(KeyRevoked(key=info))

    async def _announce(self, key_id: str, change: KeyChange) -> None:
        """Apply a change here before answering, then tell every gateway."""
        await self.load()
        event = KeysChanged(key_id=key_id, change=change, at=time.time())
        await self._nc.publish(self._subjects.event("keys"), encode(event))

    async def changed(self, msg: Msg) -> None:
        """Another gateway (or this one) changed a key: drop a revoked one now, read again."""
        try:
            event = _decode_changed(msg.data)
        except msgspec.DecodeError as exc:
            self._log.warning("keys_event_unreadable", error=str(exc))
        else:
            if event.change == "revoked":
                self.ring.drop(event.key_id)
        self._changed.set()
