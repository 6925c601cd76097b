"""OpenAI's API in front of the fleet, as the `openai` client and its kin expect it.

Bodies are mapped onto the wire contract (`openai_wire`); answers go back as OpenAI
writes them: one `chat.completion` (or `text_completion`) object, or server-sent events
`data: {...}\\n\\n` ending `data: [DONE]`, the first delta carrying the role, the last the
`finish_reason`, and with `stream_options.include_usage` a usage chunk whose `choices`
is empty. Errors are `{"error": {"message", "type", "param", "code"}}`; 429 and 503 carry
`Retry-After` and `retry-after-ms`, which the `openai` client's retries obey.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec

from actors.gateway.catalog import catalog, unix_time
from actors.gateway.errors import HttpError
from actors.gateway.http import Reply, Request, Stream, json_reply
from actors.gateway.openai_wire import (
    ChatCompletionBody,
    CompletionBody,
    EmbeddingBody,
    Unsupported,
    decode_body,
    encode_vector,
    to_chat,
    to_embed,
    to_generate,
)
from actors.gateway.routing import send, used
from bus.client import ChunkStream, Client
from bus.errors import ModelNotFound, OllameshError
from schemas import ChatResult, Chunk, EmbedResult, GenerateResult, http_status
from schemas.replies import Stats
from schemas.requests import ToolCall

__all__ = ["OpenAIRoutes", "error_reply"]

_encode = msgspec.json.Encoder().encode
_DONE = b"data: [DONE]\n\n"
_FINGERPRINT = "fp_ollamesh"


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def _error_body(exc: OllameshError, status: int) -> dict[str, Any]:
    param = (exc.param or None) if isinstance(exc, Unsupported) else None
    return {"error": {"message": exc.message, "type": _error_type(status), "param": param,
                      "code": exc.code}}  # fmt: skip


def error_reply(exc: OllameshError) -> Reply:
    """A failure as OpenAI answers it; a wait the fleet asks for in both retry headers."""
    status = exc.status if isinstance(exc, HttpError) else http_status(exc.code)
    headers = {}
    if exc.retry_after_ms:
        headers["retry-after"] = str(max(1, round(exc.retry_after_ms / 1000)))
        headers["retry-after-ms"] = str(exc.retry_after_ms)
    return json_reply(status, _error_body(exc, status), headers)


def _missing(model: str | None) -> str:
    return f"The model `{model}` does not exist"


def _usage(stats: Stats | None) -> dict[str, int]:
    prompt = stats.prompt_eval_count if stats is not None else 0
    completion = stats.eval_count if stats is not None else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def _finish(stats: Stats | None, called: bool) -> str:
    if called:
        return "tool_calls"
    return "length" if stats is not None and stats.done_reason == "length" else "stop"


def _calls(calls: list[ToolCall], first: int, streamed: bool) -> list[dict[str, Any]]:
    """Tool calls as OpenAI writes them: an id, `type`, the arguments as a JSON string
    (and, streamed, each one's `index`)."""
    out = []
    for i, call in enumerate(calls, first):
        entry: dict[str, Any] = {"index": i} if streamed else {}
        entry |= {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                  "function": {"name": call.function.name,
                               "arguments": _encode(call.function.arguments).decode()}}  # fmt: skip
        out.append(entry)
    return out


class OpenAIRoutes:
    """The handlers of OpenAI's routes, on one fleet client."""

    def __init__(self, client: Client, roles: Mapping[str, str]) -> None:
        self.client = client
        self.roles = roles

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", "/v1/models"): self.models, ("GET", "/v1/models/*"): self.model,
            ("POST", "/v1/chat/completions"): self.chat, ("POST", "/v1/completions"): self.complete,
            ("POST", "/v1/embeddings"): self.embeddings,
        }  # fmt: skip

    async def _listed(self, req: Request) -> list[dict[str, Any]]:
        out = []
        for item in await catalog(self.client, self.roles, req.may_use):
            created = unix_time(item.model.modified_at)
            entry = {"id": item.name, "object": "model", "created": created, "owned_by": "library"}
            if item.alias_of is not None:
                entry |= {"owned_by": "ollamesh", "alias_of": item.alias_of}
            out.append(entry)
        return out

    async def models(self, req: Request) -> Reply:
        return json_reply(200, {"object": "list", "data": await self._listed(req)})

    async def model(self, req: Request) -> Reply:
        name = req.path[len("/v1/models/") :]
        for entry in await self._listed(req):
            if entry["id"] == name:
                return json_reply(200, entry)
        raise ModelNotFound(_missing(name))

    async def chat(self, req: Request) -> Reply | Stream:
        body: ChatCompletionBody = decode_body(ChatCompletionBody, req.body)
        request = to_chat(body, req.request_id)
        return await self._answer(req, body, request, "chatcmpl", _ChatShape())

    async def complete(self, req: Request) -> Reply | Stream:
        body: CompletionBody = decode_body(CompletionBody, req.body)
        request = to_generate(body, req.request_id)
        return await self._answer(req, body, request, "cmpl", _TextShape())

    async def _answer(
        self, req: Request, body: Any, request: Any, kind: str, shape: _Shape
    ) -> Reply | Stream:
        sent = await send(self.client, req, request, _missing)
        head = {"id": f"{kind}-{request.request_id}", "created": int(time.time())}
        headers = {"x-request-id": request.request_id}
        if not body.stream:
            result: ChatResult | GenerateResult = sent  # type: ignore[assignment]
            return json_reply(200, shape.whole(head | {"model": result.model}, result), headers)
        stream: ChunkStream = sent  # type: ignore[assignment]
        usage = body.stream_options is not None and body.stream_options.include_usage
        events = _events(req, stream, head, shape, usage, body.model)
        return Stream(200, events, "text/event-stream", headers | {"cache-control": "no-cache"},
                      on_close=stream)  # fmt: skip

    async def embeddings(self, req: Request) -> Reply:
        body: EmbeddingBody = decode_body(EmbeddingBody, req.body)
        request = to_embed(body, req.request_id)
        result: EmbedResult = await send(self.client, req, request, _missing)  # type: ignore[assignment]
        data = [{"object": "embedding", "index": i,
                 "embedding": encode_vector(v, body.encoding_format)}
                for i, v in enumerate(result.embeddings)]  # fmt: skip
        usage = {"prompt_tokens": result.prompt_eval_count,
                 "total_tokens": result.prompt_eval_count}  # fmt: skip
        return json_reply(200, {"object": "list", "data": data, "model": result.model,
                                "usage": usage})  # fmt: skip


class _Shape:
    """How one route writes an answer: whole, or as the choices of one chunk."""

    object_whole = ""
    object_chunk = ""

    def whole(self, head: dict[str, Any], result: Any) -> dict[str, Any]:
        raise NotImplementedError

    def delta(self, chunk: Chunk, first: bool, calls: int) -> dict[str, Any] | None:
        """A chunk's choice, or None for a chunk with nothing to say."""
        raise NotImplementedError

    def last(self, finish: str) -> dict[str, Any]:
        raise NotImplementedError


class _ChatShape(_Shape):
    object_whole = "chat.completion"
    object_chunk = "chat.completion.chunk"

    def whole(self, head: dict[str, Any], result: ChatResult) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": result.message.content}
        calls = result.message.tool_calls or []
        if calls:
            message["tool_calls"] = _calls(calls, 0, streamed=False)
        if result.message.thinking:
            message["reasoning"] = result.message.thinking
        choice = {"index": 0, "message": message, "logprobs": None,
                  "finish_reason": _finish(result, bool(calls))}  # fmt: skip
        return {**head, "object": self.object_whole, "system_fingerprint": _FINGERPRINT,
                "choices": [choice], "usage": _usage(result)}  # fmt: skip

    def delta(self, chunk: Chunk, first: bool, calls: int) -> dict[str, Any] | None:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if chunk.text or first:
            delta["content"] = chunk.text
        if chunk.thinking:
            delta["reasoning"] = chunk.thinking
        if chunk.tool_calls:
            delta["tool_calls"] = _calls(chunk.tool_calls, calls, streamed=True)
        if not delta:
            return None
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}

    def last(self, finish: str) -> dict[str, Any]:
        return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}


class _TextShape(_Shape):
    object_whole = object_chunk = "text_completion"

    def whole(self, head: dict[str, Any], result: GenerateResult) -> dict[str, Any]:
        choice = {"index": 0, "text": result.response, "logprobs": None,
                  "finish_reason": _finish(result, False)}  # fmt: skip
        return {**head, "object": self.object_whole, "system_fingerprint": _FINGERPRINT,
                "choices": [choice], "usage": _usage(result)}  # fmt: skip

    def delta(self, chunk: Chunk, first: bool, calls: int) -> dict[str, Any] | None:
        if not chunk.text:
            return None
        return {"index": 0, "text": chunk.text, "logprobs": None, "finish_reason": None}

    def last(self, finish: str) -> dict[str, Any]:
        return {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + _encode(body) + b"\n\n"


async def _events(
    req: Request, stream: ChunkStream, head: dict[str, Any], shape: _Shape, usage: bool, model: str
) -> AsyncIterator[bytes]:
    """The stream as OpenAI's server-sent events; a failure after the first event is an
    `{"error": ...}` event (which the `openai` client raises), then `[DONE]`."""
    base = {**head, "object": shape.object_chunk, "model": model,
            "system_fingerprint": _FINGERPRINT}  # fmt: skip
    extra: Callable[[dict[str, Any]], dict[str, Any]] = (
        (lambda e: e | {"usage": None}) if usage else (lambda e: e)
    )
    calls = 0
    first = True
    try:
        async for chunk in stream:
            base["model"] = stream.model or model
            choice = shape.delta(chunk, first, calls)
            if choice is None:
                continue
            first = False
            calls += len(chunk.tool_calls or ())
            yield _event(extra({**base, "choices": [choice]}))
    except OllameshError as exc:
        yield _event(_error_body(exc, http_status(exc.code)))
        yield _DONE
        return
    done = stream.done
    await req.spent(used(done))
    yield _event(extra({**base, "choices": [shape.last(_finish(done, calls > 0))]}))
    if usage:
        yield _event({**base, "choices": [], "usage": _usage(done)})
    yield _DONE
