"""Ollama's model-management API for one host: check, show, pull, load, unload, delete."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from actors.backends.admin import Check
from actors.backends.http import HostUnavailable, error_text
from actors.backends.ollama import OllamaClient
from actors.backends.ollama_api import (
    PullLine,
    decode_ps,
    decode_pull_line,
    decode_tags,
    decode_version,
)
from bus.errors import BadRequest, ModelNotFound, OllameshError, Timeout, UpstreamError, quote
from schemas import encode

__all__ = ["DiskFull", "OllamaAdmin", "PullLine", "pull_error"]


class DiskFull(UpstreamError):
    """The host has no room for the model (Ollama: `no space left on device`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def pull_error(text: str, model: str) -> OllameshError:
    """The typed failure an `{"error": ...}` line of a pull means."""
    if "file does not exist" in text or "not found" in text:
        return ModelNotFound(f"no model {quote(model)} in the registry: {text}")
    if "no space left" in text:
        return DiskFull(f"the host's disk is full: {text}")
    return UpstreamError(f"the pull failed: {text}")


class OllamaAdmin(OllamaClient):
    """The health monitor's client for one host: never the generate path's slots.
    Models are named as the fleet names them (`[models] aliases`) both ways."""

    pulls_models = True

    async def check(self, timeout: float) -> Check:
        """Ask version, tags and ps at once, within `timeout` together."""
        started = time.perf_counter()

        async def ask(path: str) -> bytes:
            return await self._get(path, timeout)

        answers = await asyncio.gather(
            ask("/api/version"), ask("/api/tags"), ask("/api/ps"), return_exceptions=True
        )
        check = Check(latency_ms=round((time.perf_counter() - started) * 1000, 3))
        version, tags, ps = answers
        try:
            if isinstance(version, bytes):
                check.version = decode_version(version).version
            if isinstance(tags, bytes):
                listed = decode_tags(tags).models
                names = self.names.learn(t.name for t in listed)
                check.models = [msgspec.structs.replace(t.stored(), name=name)
                                for t, name in zip(listed, names, strict=True)]  # fmt: skip
            if isinstance(ps, bytes):
                check.loaded = [msgspec.structs.replace(m, name=self.names.fleet(m.name))
                                for m in decode_ps(ps).models]  # fmt: skip
        except msgspec.DecodeError as exc:
            check.failures.append(f"unreadable answer: {exc}")
        for path, answer in zip(("version", "tags", "ps"), answers, strict=True):
            if isinstance(answer, BaseException):
                message = getattr(answer, "message", repr(answer))
                check.failures.append(f"{path}: {message}")
        return check

    async def show(self, model: str, timeout: float) -> dict[str, Any]:
        body = await self._post("/api/show", {"model": self.names.own(model)}, model, timeout)
        info: dict[str, Any] = msgspec.json.decode(body)
        return info

    async def delete(self, model: str, timeout: float) -> None:
        body = encode({"model": self.names.own(model)})
        await self.send("DELETE", "/api/delete", body, model, timeout)

    async def copy(self, model: str, destination: str, timeout: float) -> None:
        body = {"source": self.names.own(model), "destination": destination}
        await self._post("/api/copy", body, model, timeout)

    async def load(
        self, model: str, keep_alive: float | str | None, options: dict[str, Any], timeout: float
    ) -> None:
        """Load `model` (keep_alive 0: unload it) with an empty request: no text generated.

        Embedding models cannot generate: they load through `/api/embed` with no input.
        """
        body: dict[str, Any] = {"model": self.names.own(model), "stream": False}
        if keep_alive is not None:  # None: Ollama's default (5 minutes)
            body["keep_alive"] = keep_alive
        if options:
            body["options"] = options
        try:
            await self._post("/api/generate", {**body, "prompt": ""}, model, timeout)
        except BadRequest as exc:
            if "does not support generate" not in exc.message:
                raise
            del body["stream"]
            await self._post("/api/embed", {**body, "input": []}, model, timeout)

    async def pull(self, model: str, timeout: float) -> AsyncIterator[PullLine]:
        """Pull `model`, yielding Ollama's progress lines; raise typed on failure."""
        data = encode({"model": self.names.own(model), "stream": True})
        end = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(end) as deadline:
                async with self._response("POST", "/api/pull", data) as resp:
                    if resp.status != 200:
                        raise pull_error(error_text(await resp.read()), model)
                    async for raw in resp.content:
                        if not raw.strip():
                            continue
                        line = decode_pull_line(raw)
                        if line.error:
                            raise pull_error(line.error, model)
                        # No deadline may be armed across a yield: it would cancel the
                        # caller's code instead of this read.
                        deadline.reschedule(None)
                        yield line
                        deadline.reschedule(end)
                        if line.status == "success":
                            return
        except TimeoutError as exc:
            raise Timeout(f"pulling {model} took longer than {timeout:.0f}s") from exc
        except aiohttp.ClientError as exc:
            raise HostUnavailable(f"{self.url} went away while pulling {model}: {exc!r}") from exc
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"the host sent a malformed pull line: {exc}") from exc
        raise HostUnavailable(f"{self.url} ended the pull of {model} before `success`")

    async def _post(self, path: str, body: dict[str, Any], model: str, timeout: float) -> bytes:
        return await self.send("POST", path, encode(body), model, timeout)
