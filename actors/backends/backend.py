"""The executor's view of any model host: what it must answer, whatever API it speaks.

A backend is small on purpose: whether the host is ready (`health`), what it has
(`models`), how much it can run and runs now (`capacity`), and the work (`chat`,
`generate`, `embed`), taking requests of the wire contract and giving Ollama-shaped
`Line`s back. Policy (retries, circuits, deadlines, placement) stays in the executor,
the same for every kind; a third kind of host is one new module and a line in
`actors.backends.kinds`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from actors.backends.http import StreamTimeouts
from actors.backends.ollama_api import Line
from schemas import ChatRequest, EmbedRequest, GenerateRequest

__all__ = ["Backend", "Capacity", "Catalogue"]


@dataclass(frozen=True)
class Catalogue:
    """The models a host has (the fleet's names) and, where it says, those in memory."""

    models: list[str]
    # None: unknown now (the call that says failed: `problem` tells why).
    loaded: set[str] | None
    problem: str | None = None


@dataclass(frozen=True)
class Capacity:
    """What the engine says of its parallel slots and how many are busy (None: it does not)."""

    slots: int | None = None
    busy: int | None = None


class Backend(Protocol):
    """One model host, as the executor uses it."""

    kind: str
    url: str
    # Whether its generate completes the prompt as it is (no chat template applied), so
    # an answer moved to it goes on from the prompt plus the text so far.
    raw_completions: bool

    async def health(self, timeout: float) -> str:
        """The engine's version; `HostLoading` while it loads, `HostUnavailable` if down."""
        ...

    async def models(self, timeout: float) -> Catalogue: ...

    async def capacity(self, timeout: float) -> Capacity: ...

    def chat(self, request: ChatRequest, timeouts: StreamTimeouts) -> AsyncIterator[list[Line]]:
        """Stream a chat (its `model` the fleet's name) as lines ending with `done`."""
        ...

    def generate(
        self, request: GenerateRequest, timeouts: StreamTimeouts
    ) -> AsyncIterator[list[Line]]: ...

    async def embed(self, request: EmbedRequest, timeout: float) -> Line: ...

    async def close(self) -> None: ...
