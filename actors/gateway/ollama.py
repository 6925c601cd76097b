"""Ollama's native API in front of the fleet, as Ollama's own clients expect it.

Requests are decoded into the wire contract (whose field names are Ollama's) and sent on
the public subjects; answers go back as Ollama writes them: NDJSON lines
(`application/x-ndjson`) ending with the figures, or one object with `stream: false`;
errors as `{"error": "..."}` with Ollama's statuses, and one more such line when a
stream breaks after it began. Pull, delete and copy act on every host concerned.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import msgspec

from actors.gateway.catalog import catalog
from actors.gateway.errors import HttpError, MethodNotAllowed, RouteNotFound
from actors.gateway.http import Reply, Request, Stream, json_reply
from actors.gateway.routing import send, used
from bus.client import ChunkStream, Client
from bus.errors import BadRequest, ModelNotFound, OllameshError
from schemas import (
    ChatRequest,
    ChatResult,
    Chunk,
    Done,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
)
from schemas.fleet import ModelsReply, PullProgress

__all__ = ["ADMIN", "OllamaRoutes", "error_reply"]

# The routes only an admin key may use: they change what the hosts have.
ADMIN = frozenset({("POST", "/api/pull"), ("DELETE", "/api/delete"), ("POST", "/api/copy")})

VERSION = "0.12.6"
# Ollama's statuses for our error codes (499: the client went away).
_STATUS = {
    "bad_request": 400, "payload_too_large": 413, "model_not_found": 404,
    "rate_limited": 429, "overloaded": 503, "no_healthy_host": 503, "unavailable": 503,
    "cancelled": 499, "timeout": 500, "upstream_error": 500, "internal": 500,
}  # fmt: skip
_encode = msgspec.json.Encoder().encode
_STRIP = ("type", "request_id", "host", "fallback_from", "cached")


def _now() -> str:
    moment = dt.datetime.now(dt.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def error_reply(exc: OllameshError) -> Reply:
    """A failure as Ollama answers it: its status and `{"error": "..."}` (an unknown route
    as Go's router does, in plain text)."""
    if isinstance(exc, RouteNotFound | MethodNotAllowed):
        text = "404 page not found" if exc.status == 404 else "405 method not allowed"
        return Reply(exc.status, text.encode())
    headers = {}
    if exc.retry_after_ms:
        headers["retry-after"] = str(max(1, round(exc.retry_after_ms / 1000)))
    status = exc.status if isinstance(exc, HttpError) else _STATUS.get(exc.code, 500)
    return json_reply(status, {"error": exc.message}, headers)


def _missing(model: str | None) -> str:
    """A model the fleet lacks, in Ollama's words."""
    return f'model "{model}" not found, try pulling it first'


@contextlib.contextmanager
def _in_ollama_words(model: str) -> Iterator[None]:
    try:
        yield
    except ModelNotFound as exc:
        raise ModelNotFound(_missing(model)) from exc


def _failures(reply: ModelsReply) -> list[str]:
    """The hosts a fleet-wide verb failed on (it raised if it failed on every one)."""
    return [f"{r.host}: {r.error.message}" for r in reply.results if r.error is not None]


class _PullWatch:
    """A pull across the fleet as Ollama's progress lines; the client leaving stops the
    watching, not the pull (other requests may be waiting for the same model)."""

    def __init__(self, client: Client, model: str, request_id: str) -> None:
        self.client, self.model, self.request_id = client, model, request_id
        self._events: asyncio.Queue[PullProgress] = asyncio.Queue()
        self._task: asyncio.Task[ModelsReply] | None = None

    async def lines(self) -> AsyncIterator[bytes]:
        pull = self.client.fleet.pull(self.model, on_progress=self._events.put_nowait)
        self._task = task = asyncio.ensure_future(pull)
        layers: dict[str, dict[str, tuple[int, int]]] = {}  # digest -> host -> bytes
        said: set[str] = set()
        while True:
            got = asyncio.ensure_future(self._events.get())
            await asyncio.wait({got, task}, return_when=asyncio.FIRST_COMPLETED)
            if not got.done():
                got.cancel()
                break
            event = got.result()
            if event.digest:
                layers.setdefault(event.digest, {})[event.host] = (event.completed, event.total)
                hosts = layers[event.digest].values()
                line = {"status": event.status, "digest": event.digest,
                        "total": sum(t for _, t in hosts),
                        "completed": sum(c for c, _ in hosts)}  # fmt: skip
                yield _encode(line) + b"\n"
            elif event.status and event.status != "success" and event.status not in said:
                said.add(event.status)
                yield _encode({"status": event.status}) + b"\n"
        try:
            failed = _failures(task.result())
        except OllameshError as exc:
            yield _encode({"error": exc.message}) + b"\n"
            return
        for failure in failed:
            yield _encode({"status": f"failed on {failure}"}) + b"\n"
        yield b'{"status":"success"}\n'

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _ollama_shape(result: msgspec.Struct) -> dict[str, Any]:
    """A result as Ollama writes it: our routing fields left out, `created_at` added."""
    out = msgspec.to_builtins(result)
    for key in _STRIP:
        out.pop(key, None)
    return {"model": out.pop("model", ""), "created_at": _now(), **out}


def _decode(kind: type[msgspec.Struct], body: bytes) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


class OllamaRoutes:
    """The handlers of Ollama's routes, on one fleet client."""

    def __init__(self, client: Client, roles: Mapping[str, str]) -> None:
        self.client = client
        self.roles = roles

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", "/"): self.root, ("HEAD", "/"): self.root,
            ("GET", "/api/version"): self.version, ("HEAD", "/api/version"): self.version,
            ("GET", "/api/tags"): self.tags, ("GET", "/api/ps"): self.ps,
            ("POST", "/api/show"): self.show, ("POST", "/api/generate"): self.generate,
            ("POST", "/api/chat"): self.chat, ("POST", "/api/embed"): self.embed,
            ("POST", "/api/embeddings"): self.embeddings, ("POST", "/api/pull"): self.pull,
            ("DELETE", "/api/delete"): self.delete, ("POST", "/api/copy"): self.copy,
        }  # fmt: skip

    async def root(self, req: Request) -> Reply:
        return Reply(200, b"Ollama is running", {"content-type": "text/plain; charset=utf-8"})

    async def version(self, req: Request) -> Reply:
        return json_reply(200, {"version": VERSION})

    async def tags(self, req: Request) -> Reply:
        """Every model on the fleet, and each role as an alias (`details.parent_model`
        and `alias_of` name the model it stands for)."""
        models = []
        for item in await catalog(self.client, self.roles, req.may_use):
            m = item.model
            entry: dict[str, Any] = {
                "name": item.name, "model": item.name, "modified_at": m.modified_at,
                "size": m.size, "digest": m.digest,
                "details": {"parent_model": item.alias_of or "", "format": "gguf",
                            "family": m.family, "families": [m.family] if m.family else None,
                            "parameter_size": m.parameter_size,
                            "quantization_level": m.quantization},
            }  # fmt: skip
            if item.alias_of is not None:
                entry["alias_of"] = item.alias_of
            models.append(entry)
        return json_reply(200, {"models": models})

    async def ps(self, req: Request) -> Reply:
        reply = await self.client.fleet.models("ps")
        loaded = [
            {"name": m.name, "model": m.name, "size": m.size, "size_vram": m.size_vram,
             "expires_at": m.expires_at, "context_length": m.context_length}
            for host in reply.results for m in host.loaded or []
        ]  # fmt: skip
        return json_reply(200, {"models": loaded})

    def _named(self, req: Request, body: dict[str, Any], field: str = "model") -> str:
        """The model `body` names (`name` is the older spelling), a role as its model,
        if the request's key may use it."""
        name = body.get(field) or (body.get("name") if field == "model" else None)
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"{field} is required")
        req.allow(name)
        return self.roles.get(name, name)

    async def show(self, req: Request) -> Reply:
        asked = _decode(dict[str, Any], req.body)
        name = self._named(req, asked)
        with _in_ollama_words(name):
            reply = await self.client.fleet.models("show", name)
        for host in reply.results:
            if host.ok and host.info is not None:
                return json_reply(200, host.info)
        raise ModelNotFound(_missing(name))

    async def pull(self, req: Request) -> Reply | Stream:
        """Pull onto every host that is up: Ollama's progress lines, each layer's bytes
        summed over the hosts, ending `{"status": "success"}`; one object with
        `stream: false`. A host that failed while others succeeded is a status line."""
        asked = _decode(dict[str, Any], req.body)
        name = self._named(req, asked)
        if asked.get("stream") is False:
            await self.client.fleet.pull(name)
            return json_reply(200, {"status": "success"})
        watch = _PullWatch(self.client, name, req.request_id)
        return Stream(200, watch.lines(), "application/x-ndjson",
                      {"x-request-id": req.request_id}, on_close=watch)  # fmt: skip

    async def delete(self, req: Request) -> Reply:
        name = self._named(req, _decode(dict[str, Any], req.body))
        with _in_ollama_words(name):
            await self.client.fleet.models("delete", name)
        return Reply(200, b"")

    async def copy(self, req: Request) -> Reply:
        asked = _decode(dict[str, Any], req.body)
        source = self._named(req, asked, "source")
        destination = self._named(req, asked, "destination")
        with _in_ollama_words(source):
            await self.client.fleet.models("copy", source, destination=destination)
        return Reply(200, b"")

    async def generate(self, req: Request) -> Reply | Stream:
        request = _decode(GenerateRequest, req.body)
        return await self._answer(req, request, self._generate_line, GenerateResult)

    async def chat(self, req: Request) -> Reply | Stream:
        request = _decode(ChatRequest, req.body)
        return await self._answer(req, request, self._chat_line, ChatResult)

    async def _answer(
        self, req: Request, request: Any, line: Any, result_type: type[msgspec.Struct]
    ) -> Reply | Stream:
        sent = await send(self.client, req, request, _missing)
        if not request.stream:
            return json_reply(200, _ollama_shape(sent), {"x-request-id": request.request_id})
        stream: ChunkStream = sent  # type: ignore[assignment]
        return Stream(
            200, _lines(req, stream, request.model or "", line), "application/x-ndjson",
            {"x-request-id": stream.request_id}, on_close=stream,
        )  # fmt: skip

    @staticmethod
    def _generate_line(model: str, chunk: Chunk) -> dict[str, Any]:
        line: dict[str, Any] = {"model": model, "created_at": _now(), "response": chunk.text}
        if chunk.thinking:
            line["thinking"] = chunk.thinking
        line["done"] = False
        return line

    @staticmethod
    def _chat_line(model: str, chunk: Chunk) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": chunk.text}
        if chunk.thinking:
            message["thinking"] = chunk.thinking
        if chunk.tool_calls:
            message["tool_calls"] = msgspec.to_builtins(chunk.tool_calls)
        return {"model": model, "created_at": _now(), "message": message, "done": False}

    async def embed(self, req: Request) -> Reply:
        request = _decode(EmbedRequest, req.body)
        result: EmbedResult = await send(self.client, req, request, _missing)  # type: ignore[assignment]
        return json_reply(200, _ollama_shape(result))

    async def embeddings(self, req: Request) -> Reply:
        """The legacy route: `{model, prompt}` -> `{embedding}`."""
        asked = _decode(dict[str, Any], req.body)
        request = _decode(EmbedRequest, _encode({"model": asked.get("model"),
                                                 "input": asked.get("prompt", "")}))  # fmt: skip
        result: EmbedResult = await send(self.client, req, request, _missing)  # type: ignore[assignment]
        return json_reply(200, {"embedding": result.embeddings[0] if result.embeddings else []})


async def _lines(req: Request, stream: ChunkStream, model: str, line: Any) -> AsyncIterator[bytes]:
    """The stream as Ollama's NDJSON: a line per chunk, then the figures; a failure after
    the first line is one more `{"error": ...}` line."""
    try:
        async for chunk in stream:
            yield _encode(line(stream.model or model, chunk)) + b"\n"
    except OllameshError as exc:
        yield _encode({"error": exc.message}) + b"\n"
        return
    done: Done | None = stream.done
    await req.spent(used(done))
    final = line(stream.model or model, Chunk(request_id="", seq=0))
    final["done"] = True
    if done is not None:
        final["model"] = done.model or final["model"]
        final |= {k: v for k, v in msgspec.to_builtins(done).items()
                  if k in _FIGURES and v is not None}  # fmt: skip
    yield _encode(final) + b"\n"


_FIGURES = (
    "done_reason", "total_duration", "load_duration", "prompt_eval_count",
    "prompt_eval_duration", "eval_count", "eval_duration",
)  # fmt: skip
