"""The HTTP gateway's API keys (`llm.v1.keys.{create,list,revoke}`, served by any gateway
with a database; `llm.v1.events.keys` tells every gateway to read them again).

A key's secret is shown once, in the answer to `keys.create`, and never again: what is
stored is its SHA-256, and what is listed is its first characters (`prefix`). Neither
the secret nor its digest is in any other message.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from schemas.requests import Name

__all__ = [
    "KeyChange",
    "KeyCreate",
    "KeyCreated",
    "KeyId",
    "KeyInfo",
    "KeyList",
    "KeyName",
    "KeyRevoke",
    "KeyRevoked",
    "Keys",
    "KeysChanged",
]

# A key's id: 16 hex digits, also a token of the rate-limit bucket's keys.
KeyId = Annotated[str, Meta(pattern=r"\A[0-9a-f]{16}\Z")]
# What a person calls a key ("ci", "open-webui@gpu-2"): printable, short.
KeyName = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"\A[\x21-\x7e]+\Z")]
# Postgres' integer: a limit above it is no limit worth writing down.
PerMinute = Annotated[int, Meta(gt=0, le=2**31 - 1)]
KeyChange = Literal["created", "revoked"]


class KeyCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    """`keys.create`: a new key, with its own limits, models and rights."""

    name: KeyName
    rpm: PerMinute | None = None
    tpm: PerMinute | None = None
    # None: every model; else the models (or role aliases) it may name, as given.
    models: Annotated[list[Name], Meta(min_length=1, max_length=256)] | None = None
    # Whether it may use the admin routes (pulling and deleting models).
    admin: bool = False


class KeyList(Struct, kw_only=True, forbid_unknown_fields=True):
    """`keys.list`: every key, newest first (`revoked: false`: the active ones only)."""

    revoked: bool = True


class KeyRevoke(Struct, kw_only=True, forbid_unknown_fields=True):
    """`keys.revoke`: a key no longer valid, on every gateway at once."""

    key_id: KeyId


class KeyInfo(Struct, kw_only=True, tag_field="type", tag="key"):
    """A key as listed: never its secret nor the secret's digest."""

    key_id: str
    name: str
    prefix: str
    rpm: int | None = None
    tpm: int | None = None
    models: list[str] | None = None
    admin: bool = False
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None


class KeyCreated(Struct, kw_only=True, tag_field="type", tag="key_created"):
    """The answer to `keys.create`: the key, and its secret, which is never shown again."""

    key: KeyInfo
    secret: str


class Keys(Struct, kw_only=True, tag_field="type", tag="keys"):
    """The answer to `keys.list`."""

    keys: list[KeyInfo]


class KeyRevoked(Struct, kw_only=True, tag_field="type", tag="key_revoked"):
    """The answer to `keys.revoke` (the same for a key revoked before)."""

    key: KeyInfo


class KeysChanged(Struct, kw_only=True, tag_field="type", tag="keys_changed"):
    """`events.keys`: a key was created or revoked; every gateway reads the keys again."""

    key_id: str
    change: KeyChange
    at: float
