"""Ollama's model-management API for one host: check, show, pull, load, unload, delete."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from msgspec import Struct

from actors.executor.ollama import HostUnavailable, OllamaHost, error_text
from bus.errors import BadRequest, ModelNotFound, OllameshError, Timeout, UpstreamError
from schemas import encode
from schemas.fleet import LoadedModel, StoredModel

__all__ = ["Check", "DiskFull", "OllamaAdmin", "PullLine"]


class DiskFull(UpstreamError):
    """The host has no room for the model (Ollama: `no space left on device`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class _Details(Struct, frozen=True):
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""


class _Tag(Struct):
    name: str
    size: int = 0
    digest: str = ""
    modified_at: str = ""
    details: _Details = _Details()


class _Tags(Struct):
    models: list[_Tag] = []


class _Ps(Struct):
    # `/api/ps` entries decode straight into ours: the fields are Ollama's, by name.
    models: list[LoadedModel] = []


class PullLine(Struct, kw_only=True):
    """One NDJSON line of `/api/pull`."""

    status: str = ""
    digest: str = ""
    total: int = 0
    completed: int = 0
    error: str | None = None


_tags = msgspec.json.Decoder(_Tags)
_ps = msgspec.json.Decoder(_Ps)
_pull_line = msgspec.json.Decoder(PullLine)


@dataclass
class Check:
    """What one health check learnt; the failures of the calls that did not answer."""

    version: str | None = None
    models: list[StoredModel] | None = None
    loaded: list[LoadedModel] | None = None
    failures: list[str] = field(default_factory=list)
    latency_ms: float = 0.0

    @property
    def reachable(self) -> bool:
        return self.version is not None or self.models is not None or self.loaded is not None


def _stored(tag: _Tag) -> StoredModel:
    d = tag.details
    return StoredModel(
        name=tag.name,
        size=tag.size,
        digest=tag.digest,
        modified_at=tag.modified_at,
        family=d.family,
        parameter_size=d.parameter_size,
        quantization=d.quantization_level,
    )


def pull_error(text: str, model: str) -> OllameshError:
    """The typed failure an `{"error": ...}` line of a pull means."""
    if "file does not exist" in text or "not found" in text:
        return ModelNotFound(f"no model {model!r} in the registry: {text}")
    if "no space left" in text:
        return DiskFull(f"the host's disk is full: {text}")
    return UpstreamError(f"the pull failed: {text}")


class OllamaAdmin(OllamaHost):
    """The health monitor's client for one host: never the generate path's slots."""

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
                check.version = msgspec.json.decode(version, type=dict[str, Any]).get("version", "")
            if isinstance(tags, bytes):
                check.models = [_stored(t) for t in _tags.decode(tags).models]
            if isinstance(ps, bytes):
                check.loaded = _ps.decode(ps).models
        except msgspec.DecodeError as exc:
            check.failures.append(f"unreadable answer: {exc}")
        for path, answer in zip(("version", "tags", "ps"), answers, strict=True):
            if isinstance(answer, BaseException):
                message = getattr(answer, "message", repr(answer))
                check.failures.append(f"{path}: {message}")
        return check

    async def show(self, model: str, timeout: float) -> dict[str, Any]:
        body = await self._post("/api/show", {"model": model}, model, timeout)
        info: dict[str, Any] = msgspec.json.decode(body)
        return info

    async def delete(self, model: str, timeout: float) -> None:
        await self.send("DELETE", "/api/delete", encode({"model": model}), model, timeout)

    async def load(
        self, model: str, keep_alive: float | str | None, options: dict[str, Any], timeout: float
    ) -> None:
        """Load `model` (keep_alive 0: unload it) with an empty request: no text generated.

        Embedding models cannot generate: they load through `/api/embed` with no input.
        """
        body: dict[str, Any] = {"model": model, "stream": False}
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
        data = encode({"model": model, "stream": True})
        end = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(end) as deadline:
                async with (
                    self._lease() as http,
                    http.stream("POST", "/api/pull", content=data) as resp,
                ):
                    if resp.status_code != 200:
                        raise pull_error(error_text(await resp.aread()), model)
                    async for raw in resp.aiter_lines():
                        if not raw.strip():
                            continue
                        line = _pull_line.decode(raw)
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
        except httpx.HTTPError as exc:
            raise HostUnavailable(f"{self.url} went away while pulling {model}: {exc!r}") from exc
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"the host sent a malformed pull line: {exc}") from exc
        raise HostUnavailable(f"{self.url} ended the pull of {model} before `success`")

    async def _post(self, path: str, body: dict[str, Any], model: str, timeout: float) -> bytes:
        return await self.send("POST", path, encode(body), model, timeout)
