"""An OpenAI-compatible host as the health monitor manages it.

Such an engine serves the models it loaded at start: it lists them, shows them, and is
"loaded" with them; it pulls, deletes, copies and unloads nothing, and says so with a
typed `not_supported` error naming the host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from actors.backends.admin import Check
from actors.backends.http import HostLoading
from actors.backends.ollama_api import PullLine
from actors.backends.openai import OpenAIClient
from bus.errors import ModelNotFound, NotSupported, OllameshError, quote
from schemas.fleet import LoadedModel, StoredModel

__all__ = ["OpenAIAdmin"]


def _stored(entry: dict[str, Any]) -> StoredModel:
    meta = entry["meta"]
    params = meta.get("n_params")
    return StoredModel(
        name=entry["id"],
        size=int(meta.get("size") or 0),
        parameter_size=f"{params / 1e9:.2f}B" if isinstance(params, int | float) else "",
    )


def _loaded(entry: dict[str, Any]) -> LoadedModel:
    meta = entry["meta"]
    return LoadedModel(
        name=entry["id"],
        size=int(meta.get("size") or 0),
        context_length=int(meta.get("n_ctx_train") or 0),
    )


class OpenAIAdmin(OpenAIClient):
    """The health monitor's client for one OpenAI-compatible host."""

    pulls_models = False

    def _refuse(self, what: str) -> NotSupported:
        return NotSupported(
            f"{self.url} is an OpenAI-compatible engine: it cannot {what}; it serves the"
            " models it loaded at start"
        )

    async def check(self, timeout: float) -> Check:
        """Health, models and slots at once, within `timeout` together."""
        started = time.perf_counter()
        health, listed, capacity = await asyncio.gather(
            self.health(timeout), self.listed(timeout), self.capacity(timeout),
            return_exceptions=True,
        )  # fmt: skip
        check = Check(latency_ms=round((time.perf_counter() - started) * 1000, 3))
        if isinstance(health, str):
            check.version = health
        elif isinstance(health, HostLoading):
            check.loading = True
        if isinstance(listed, list):
            check.models = [_stored(e) for e in listed]
            check.loaded = [] if check.loading else [_loaded(e) for e in listed]
        if not isinstance(capacity, BaseException):
            check.slots, check.busy = capacity.slots, capacity.busy
        for what, answer in (("health", health), ("models", listed), ("slots", capacity)):
            if isinstance(answer, BaseException) and not isinstance(answer, HostLoading):
                message = answer.message if isinstance(answer, OllameshError) else repr(answer)
                check.failures.append(f"{what}: {message}")
        return check

    async def _entry(self, model: str, timeout: float) -> dict[str, Any]:
        for entry in await self.listed(timeout):
            if entry["id"] == model:
                return entry
        raise ModelNotFound(f"{self.url} does not serve {quote(model)}")

    async def show(self, model: str, timeout: float) -> dict[str, Any]:
        """What the engine says of the model, in the shape of Ollama's `/api/show`."""
        entry = await self._entry(model, timeout)
        return {"details": {"format": "gguf" if entry["own"].endswith(".gguf") else ""},
                "model_info": entry["meta"], "capabilities": ["completion"],
                "remote_model": entry["own"]}  # fmt: skip

    async def pull(self, model: str, timeout: float) -> AsyncIterator[PullLine]:
        raise self._refuse("pull models")
        yield PullLine()  # an async generator, as every host's pull is

    async def load(
        self, model: str, keep_alive: float | str | None, options: dict[str, Any], timeout: float
    ) -> None:
        """The model is loaded if the engine serves it; unloading is the engine's own."""
        if keep_alive == 0:
            raise self._refuse("unload models")
        await self._entry(model, timeout)

    async def delete(self, model: str, timeout: float) -> None:
        raise self._refuse("delete models")

    async def copy(self, model: str, destination: str, timeout: float) -> None:
        raise self._refuse("copy models")
