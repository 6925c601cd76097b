"""API keys in Postgres (`api_keys`, migration 0006): the digest of each secret, never the
secret; every call takes one connection from the pool within `ACQUIRE_TIMEOUT_S`."""

from __future__ import annotations

from typing import Any

import asyncpg

from actors.gateway.keys import Key, Minted
from actors.store.sink import ACQUIRE_TIMEOUT_S
from schemas.keys import KeyCreate, KeyInfo

__all__ = ["KeyStore"]

_COLUMNS = "key_id, name, prefix, rpm, tpm, models, admin, created_at, revoked_at, last_used_at"


def _info(row: Any) -> KeyInfo:
    def when(value: Any) -> float | None:
        return None if value is None else float(value.timestamp())

    return KeyInfo(
        key_id=row["key_id"], name=row["name"], prefix=row["prefix"], rpm=row["rpm"],
        tpm=row["tpm"], models=row["models"], admin=row["admin"],
        created_at=float(row["created_at"].timestamp()), revoked_at=when(row["revoked_at"]),
        last_used_at=when(row["last_used_at"]),
    )  # fmt: skip


class KeyStore:
    """Creates, lists and revokes keys; reads the active ones for the gateways."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def active(self) -> list[Key]:
        """Every key not revoked."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch(
                "SELECT key_id, name, secret_sha256, rpm, tpm, models, admin FROM api_keys"
                " WHERE revoked_at IS NULL"
            )
        keys = []
        for r in rows:
            secret_digest = bytes(r["secret_sha256"])
            keys.append(Key.of(r["key_id"], r["name"], secret_digest, rpm=r["rpm"],
                               tpm=r["tpm"], models=r["models"], admin=r["admin"]))  # fmt: skip
        return keys

    async def create(self, minted: Minted, ask: KeyCreate) -> KeyInfo:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "INSERT INTO api_keys (key_id, name, prefix, secret_sha256, rpm, tpm, models,"
                f" admin) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}",
                minted.key_id, ask.name, minted.prefix, minted.digest, ask.rpm, ask.tpm,
                ask.models, ask.admin,
            )  # fmt: skip
        return _info(row)

    async def every(self, revoked: bool) -> list[KeyInfo]:
        """Every key (or the active ones), newest first."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM api_keys WHERE $1 OR revoked_at IS NULL"
                " ORDER BY created_at DESC, key_id",
                revoked,
            )
        return [_info(r) for r in rows]

    async def revoke(self, key_id: str) -> KeyInfo | None:
        """Revoke a key (one revoked before keeps its time); None: no such key."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            row = await conn.fetchrow(
                "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1"
                f" RETURNING {_COLUMNS}",
                key_id,
            )
        return None if row is None else _info(row)

    async def touch(self, used: dict[str, float]) -> None:
        """Note when keys were last used (unix times), in one statement."""
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await conn.execute(
                "UPDATE api_keys AS k SET last_used_at = greatest(k.last_used_at,"
                " to_timestamp(u.at)) FROM unnest($1::text[], $2::float8[]) AS u(key_id, at)"
                " WHERE k.key_id = u.key_id",
                list(used), list(used.values()),
            )  # fmt: skip
