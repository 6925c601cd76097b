"""One OpenAI-compatible host (llama.cpp's llama-server, vLLM, SGLang, LM Studio): its
server-sent events read into Ollama-shaped lines, so the executor serves it as any host.

- Health: `/health` (503 while the model loads: `HostLoading`, not down); an engine
  without it (LM Studio) is asked `/v1/models` instead.
- Models: `/v1/models`; every model listed is in memory (such engines serve what they
  loaded at start).
- Capacity: llama.cpp's `/props` (`total_slots`) and `/slots` (`is_processing`), else the
  `requests_processing` / `num_requests_running` gauge of `/metrics`, where offered.
- Work: `/v1/chat/completions` and `/v1/completions` streamed with
  `stream_options.include_usage`, so `done` carries the engine's own token counts, and
  llama.cpp's `timings` become Ollama's durations; `/v1/embeddings`.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from actors.backends.backend import Capacity, Catalogue
from actors.backends.http import HostLoading, HostUnavailable, HttpHost, StreamTimeouts
from actors.backends.ollama_api import Line
from actors.backends.openai_map import chat_body, completion_body, embedding_body
from bus.errors import UpstreamError
from schemas import ChatRequest, EmbedRequest, GenerateRequest, Message
from schemas.openai import ChunkChoice, StreamChunk, decode_chunk, decode_embeddings
from schemas.openai import decode_model_list as decode_models
from schemas.requests import ToolCall, ToolCallFunction

__all__ = ["OpenAIClient", "Sse"]

_DONE = b"[DONE]"
# Gauges of requests running now: llama.cpp's, vLLM's, SGLang's.
_BUSY = re.compile(
    rb"^(?:llamacpp:requests_processing|vllm:num_requests_running|sglang:num_running_reqs)"
    rb"(?:\{[^}]*\})?\s+([0-9.eE+]+)\s*$",
    re.M,
)


class _Props(msgspec.Struct):
    total_slots: int | None = None
    build_info: str = ""


class _Slot(msgspec.Struct):
    is_processing: bool = False


_decode_props = msgspec.json.Decoder(_Props).decode
_decode_slots = msgspec.json.Decoder(list[_Slot]).decode


class Sse:
    """OpenAI's framing: `data: {json}` events, then `data: [DONE]`; each event becomes
    a line (text, thinking, or, at the end, the tool calls it assembled), and `[DONE]`
    the `done` line with the usage and timings the engine sent last."""

    def __init__(self, chat: bool) -> None:
        self.done = False
        self._chat = chat
        self._pending = b""
        self._started = time.perf_counter_ns()
        self._reason: str | None = None
        self._pieces = 0
        self._usage: StreamChunk | None = None
        self._calls: dict[int, list[str]] = {}  # index -> [name, arguments so far]

    def feed(self, data: bytes) -> list[Line]:
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        lines: list[Line] = []
        for raw in complete:
            raw = raw.strip()
            if not raw.startswith(b"data:"):
                continue  # blank lines between events, comments, other fields
            payload = raw[5:].strip()
            if payload == _DONE:
                lines += self._end()
                self.done = True
                break
            chunk = decode_chunk(payload)
            if chunk.error is not None:
                error = chunk.error
                raise UpstreamError(
                    f"host failed mid-stream: {error if isinstance(error, str) else error.message}"
                )
            if chunk.usage is not None:
                self._usage = chunk
            lines += [line for c in chunk.choices if (line := self._line(c)) is not None]
        return lines

    def _line(self, choice: ChunkChoice) -> Line | None:
        if choice.finish_reason is not None:
            self._reason = choice.finish_reason
        if not self._chat:
            if not choice.text:
                return None
            self._pieces += 1
            return Line(response=choice.text)
        delta = choice.delta
        if delta is None:
            return None
        for call in delta.tool_calls or ():
            entry = self._calls.setdefault(call.index, ["", ""])
            if call.function is not None:
                entry[0] += call.function.name or ""
                entry[1] += call.function.arguments or ""
        thinking = delta.reasoning_content or delta.reasoning
        if not delta.content and not thinking:
            return None
        self._pieces += 1
        return Line(message=Message(role="assistant", content=delta.content or "",
                                    thinking=thinking))  # fmt: skip

    def _tool_calls(self) -> list[ToolCall]:
        calls = []
        for name, arguments in (self._calls[i] for i in sorted(self._calls)):
            try:
                parsed = msgspec.json.decode(arguments or "{}")
            except msgspec.DecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise UpstreamError(f"host sent tool call arguments that are no JSON object: "
                                    f"{arguments[:200]!r}")  # fmt: skip
            calls.append(ToolCall(function=ToolCallFunction(name=name, arguments=parsed)))
        return calls

    def _end(self) -> list[Line]:
        lines = []
        if self._calls:
            message = Message(role="assistant", tool_calls=self._tool_calls())
            lines.append(Line(message=message))
        chunk = self._usage
        usage = chunk.usage if chunk is not None else None
        timings = chunk.timings if chunk is not None else None
        lines.append(
            Line(
                done=True,
                message=Message(role="assistant") if self._chat else None,
                done_reason="length" if self._reason == "length" else "stop",
                total_duration=time.perf_counter_ns() - self._started,
                # Without the usage (an engine that ignores include_usage), each event
                # held one token in every engine we know.
                prompt_eval_count=usage.prompt_tokens if usage else 0,
                eval_count=usage.completion_tokens if usage else self._pieces,
                prompt_eval_duration=round(timings.prompt_ms * 1e6) if timings else 0,
                eval_duration=round(timings.predicted_ms * 1e6) if timings else 0,
            )
        )
        return lines


class OpenAIClient(HttpHost):
    """A client of one OpenAI-compatible host: what generating needs; the health
    monitor's `OpenAIAdmin` extends it."""

    kind = "openai"
    raw_completions = True

    def __init__(
        self, url: str, *, connect_timeout: float, aliases: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(url, connect_timeout=connect_timeout, aliases=aliases)
        # Routes the engine lacks (404/501 once): not asked again.
        self._lacks: set[str] = set()

    async def health(self, timeout: float) -> str:
        """The engine's build (llama.cpp's `/props`; else empty); `HostLoading` while
        the model loads, `HostUnavailable` if the host does not answer."""
        if "/health" not in self._lacks:
            status, _ = await self._fetch("/health", timeout)
            if status == 503:
                raise HostLoading(f"{self.url} is loading its model")
            if status in (404, 501):
                self._lacks.add("/health")
            elif status != 200:
                raise HostUnavailable(f"{self.url}/health answered {status}")
        if "/health" in self._lacks:
            await self._get("/v1/models", timeout)
        return await self.version(timeout)

    async def listed(self, timeout: float) -> list[dict[str, Any]]:
        """`/v1/models`'s entries under the fleet's names (`id`), the engine's in `own`."""
        listed = decode_models(await self._get("/v1/models", timeout)).data
        names = self.names.learn(m.id for m in listed)
        return [{"id": name, "own": m.id, "created": m.created, "meta": m.meta or {}}
                for name, m in zip(names, listed, strict=True)]  # fmt: skip

    async def models(self, timeout: float) -> Catalogue:
        names = [m["id"] for m in await self.listed(timeout)]
        return Catalogue(names, set(names))

    async def capacity(self, timeout: float) -> Capacity:
        """The engine's slots and how many are busy, from what it offers."""
        slots = busy = None
        if (props := await self._optional("/props", timeout)) is not None:
            slots = _decode_props(props).total_slots
        if (listing := await self._optional("/slots", timeout)) is not None:
            busy = sum(s.is_processing for s in _decode_slots(listing))
        elif (metrics := await self._optional("/metrics", timeout)) is not None:
            found = _BUSY.search(metrics)
            busy = round(float(found[1])) if found else None
        return Capacity(slots=slots, busy=busy)

    async def version(self, timeout: float) -> str:
        """llama.cpp's build, where `/props` says it."""
        props = await self._optional("/props", timeout)
        return _decode_props(props).build_info if props is not None else ""

    async def _optional(self, path: str, timeout: float) -> bytes | None:
        """The body of a route some engines have; None (and not asked again) if this lacks it."""
        if path in self._lacks:
            return None
        status, body = await self._fetch(path, timeout)
        if status == 200:
            return body
        if status in (404, 501):
            self._lacks.add(path)
            return None
        # Failing now (a slot listing disabled with 403, a 500): ask again later.
        return None

    def chat(self, request: ChatRequest, timeouts: StreamTimeouts) -> AsyncIterator[list[Line]]:
        model = request.model or ""
        return self._stream("/v1/chat/completions", chat_body(request, self.names.own(model)),
                            model, timeouts, Sse(chat=True))  # fmt: skip

    def generate(
        self, request: GenerateRequest, timeouts: StreamTimeouts
    ) -> AsyncIterator[list[Line]]:
        model = request.model or ""
        return self._stream("/v1/completions", completion_body(request, self.names.own(model)),
                            model, timeouts, Sse(chat=False))  # fmt: skip

    async def embed(self, request: EmbedRequest, timeout: float) -> Line:
        model = request.model or ""
        body = embedding_body(request, self.names.own(model))
        started = time.perf_counter_ns()
        try:
            reply = decode_embeddings(await self.send("POST", "/v1/embeddings", body, model,
                                                      timeout))  # fmt: skip
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"host sent an unreadable embeddings reply: {exc}") from exc
        vectors = [e.embedding for e in sorted(reply.data, key=lambda e: e.index)]
        tokens = reply.usage.prompt_tokens if reply.usage else 0
        return Line(done=True, embeddings=vectors, prompt_eval_count=tokens,
                    total_duration=time.perf_counter_ns() - started)  # fmt: skip
