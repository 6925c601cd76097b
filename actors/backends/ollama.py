"""One Ollama host over its native API: NDJSON streams, `/api/tags`, `/api/ps`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from actors.backends.backend import Capacity, Catalogue
from actors.backends.http import HostUnavailable, HttpHost, StreamTimeouts
from actors.backends.ollama_api import Line, decode_line, decode_tags, decode_version
from bus.errors import OllameshError, UpstreamError
from schemas import ChatRequest, EmbedRequest, GenerateRequest, Request, encode

__all__ = ["OllamaClient"]


class _Ndjson:
    """Ollama's framing: one JSON object per line, the last with `done: true`."""

    def __init__(self) -> None:
        self.done = False
        self._pending = b""

    def feed(self, data: bytes) -> list[Line]:
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        lines = [decode_line(c) for c in complete if c.strip()]
        for line in lines:
            if line.error:
                raise UpstreamError(f"host failed mid-stream: {line.error}")
        if lines:
            self.done = lines[-1].done
        return lines


class OllamaClient(HttpHost):
    """A client of one Ollama host: what generating needs (the executor's part); the
    health monitor's model management extends it (`OllamaAdmin`)."""

    kind = "ollama"
    raw_completions = False

    async def health(self, timeout: float) -> str:
        """The host's Ollama version; raises `HostUnavailable` if it does not answer."""
        return decode_version(await self._get("/api/version", timeout)).version

    async def models(self, timeout: float) -> Catalogue:
        """The models on the host's disk (`/api/tags`) and in its memory (`/api/ps`)."""
        tags = decode_tags(await self._get("/api/tags", timeout)).models
        names = self.names.learn(t.name for t in tags)
        try:
            ps = decode_tags(await self._get("/api/ps", timeout)).models
        except HostUnavailable:
            raise
        except OllameshError as exc:
            return Catalogue(names, None, problem=exc.message)
        return Catalogue(names, {self.names.fleet(m.name) for m in ps})

    async def capacity(self, timeout: float) -> Capacity:
        """Ollama does not say how many requests it runs (`OLLAMA_NUM_PARALLEL`)."""
        return Capacity()

    def _body(self, request: Request) -> bytes:
        """The request under the host's own name for its model: a copy only if aliased
        (on the hot path, most names are the host's own)."""
        own = self.names.own(request.model or "")
        if own != request.model:
            request = msgspec.structs.replace(request, model=own)
        return encode(request)

    def chat(self, request: ChatRequest, timeouts: StreamTimeouts) -> AsyncIterator[list[Line]]:
        return self._stream("/api/chat", self._body(request), request.model or "", timeouts,
                            _Ndjson())  # fmt: skip

    def generate(
        self, request: GenerateRequest, timeouts: StreamTimeouts
    ) -> AsyncIterator[list[Line]]:
        return self._stream("/api/generate", self._body(request), request.model or "", timeouts,
                            _Ndjson())  # fmt: skip

    async def embed(self, request: EmbedRequest, timeout: float) -> Line:
        model = request.model or ""
        line = decode_line(await self.send("POST", "/api/embed", self._body(request), model,
                                           timeout))  # fmt: skip
        if line.error:
            raise UpstreamError(f"host error: {line.error}")
        return line
