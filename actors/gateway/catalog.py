"""The fleet's models as both route families list them: every model any host has, merged
by name, and each role listed too as an alias of the model it names."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bus.client import Client
from bus.subjects import canonical_model
from schemas.fleet import StoredModel

__all__ = ["Listed", "catalog", "unix_time"]


@dataclass(frozen=True, slots=True)
class Listed:
    """One name a client may ask for: a model, or a role (`alias_of` the model it names)."""

    name: str
    model: StoredModel
    alias_of: str | None = None


async def catalog(
    client: Client, roles: Mapping[str, str], visible: Callable[[str], bool]
) -> list[Listed]:
    """The models on the fleet's hosts by name, then the roles whose model a host has;
    only those `visible` says the client may use."""
    reply = await client.fleet.models("list")
    merged: dict[str, StoredModel] = {}
    for host in reply.results:
        for m in host.models or []:
            merged.setdefault(m.name, m)
    listed = [Listed(name, merged[name]) for name in sorted(merged)]
    for role in sorted(roles):
        target = canonical_model(roles[role])
        if role not in merged and target in merged:
            listed.append(Listed(role, merged[target], alias_of=target))
    return [item for item in listed if visible(item.name)]


def unix_time(moment: str) -> int:
    """An RFC 3339 time (Ollama's `modified_at`) in seconds since the epoch; 0 if unreadable."""
    try:
        return int(dt.datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
