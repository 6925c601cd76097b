"""What the health monitor asks of any host: one check, and model management."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.backends.ollama_api import PullLine
from schemas.fleet import LoadedModel, StoredModel

__all__ = ["Admin", "Check", "PullLine"]


@dataclass
class Check:
    """What one health check learnt; the failures of the calls that did not answer."""

    version: str | None = None
    models: list[StoredModel] | None = None
    loaded: list[LoadedModel] | None = None
    failures: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    # The engine answers but is still loading its model (not ready, not down).
    loading: bool = False
    # The engine's parallel slots and how many are busy, where it says.
    slots: int | None = None
    busy: int | None = None

    @property
    def reachable(self) -> bool:
        return (
            self.loading
            or self.version is not None
            or self.models is not None
            or self.loaded is not None
        )


class Admin(Protocol):
    """One host as the health monitor manages it (`OllamaAdmin`, `OpenAIAdmin`)."""

    kind: str
    url: str
    # Whether the host can pull models (automatic pulls skip those that cannot).
    pulls_models: bool

    async def check(self, timeout: float) -> Check: ...

    async def show(self, model: str, timeout: float) -> dict[str, Any]: ...

    def pull(self, model: str, timeout: float) -> AsyncIterator[PullLine]: ...

    async def load(
        self, model: str, keep_alive: float | str | None, options: dict[str, Any], timeout: float
    ) -> None: ...

    async def delete(self, model: str, timeout: float) -> None: ...

    async def copy(self, model: str, destination: str, timeout: float) -> None: ...

    async def close(self) -> None: ...
