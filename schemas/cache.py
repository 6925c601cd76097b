"""The cache keeper's wire contract: invalidating cached answers."""

from __future__ import annotations

from msgspec import Struct

from schemas.requests import Name

__all__ = ["Invalidate", "Invalidated"]


class Invalidate(Struct, kw_only=True, forbid_unknown_fields=True):
    """`cache.invalidate`: one model's answers, or (no model) all."""

    model: Name | None = None


class Invalidated(Struct, kw_only=True, tag_field="type", tag="invalidated"):
    """How many durable rows went (the shared tier and every router's memory alike)."""

    model: str | None = None
    removed: int = 0
