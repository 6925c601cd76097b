"""llama-server's wire, apart from I/O: request bodies as msgspec Structs, and replies
(completions whole and as SSE chunks, usage, timings, errors, host facts) with their keys
in llama-server's order."""

from __future__ import annotations

import base64
import secrets
import string
import struct
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from msgspec import Struct

from actors.simulator.catalogue import ModelInfo
from actors.simulator.text import split_json
from actors.simulator.wire import BadRequest, ChatMessage, Options, Refused

__all__ = [
    "BUILD_INFO",
    "BUSY",
    "COMPUTE_ERROR",
    "DONE",
    "SSE",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "LlamaRefused",
    "Reply",
    "Sampling",
    "Usage",
    "call_tokens",
    "context_size",
    "error_of",
    "event",
    "listing",
    "model_id",
    "pack",
    "properties",
    "random_id",
]

# What `system_fingerprint` and `/props`'s `build_info` say: llama.cpp's `b<build>-<commit>`.
BUILD_INFO = "b0-ollamesh"
BUSY = "Server busy, please try again later"
COMPUTE_ERROR = "Compute error."  # llama-server's words when decoding fails
SSE = [(b"content-type", b"text/event-stream"), (b"x-accel-buffering", b"no")]
DONE = b"data: [DONE]\n\n"

_N_CTX = 4096  # llama-server's default context, at most what the model was trained on
_RANDOM_SEEDS = (-1, 0xFFFFFFFF)  # what llama-server reads as "no seed"
_DEFAULT_PARAMS = {
    "seed": 0xFFFFFFFF, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05,
    "max_tokens": -1, "n_predict": -1, "stream": False,
}  # fmt: skip
_ALPHANUMERIC = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}

_encode = msgspec.json.encode


# -- errors and framing -----------------------------------------------------------------


class LlamaRefused(Refused):
    """A refusal with an error `type` of its own and extra fields beside `code` and
    `message` (llama-server's `exceed_context_size_error` names the sizes)."""

    def __init__(self, status: int, message: str, kind: str, **extra: object) -> None:
        super().__init__(status, message)
        self.kind = kind
        self.extra = extra


def error_of(refusal: Refused) -> dict[str, object]:
    """The `error` object of a refusal: `code`, `message` and a `type` named for the status."""
    body: dict[str, object] = {"code": refusal.status, "message": refusal.message}
    if isinstance(refusal, LlamaRefused):
        return {**body, "type": refusal.kind, **refusal.extra}
    return {**body, "type": _ERROR_TYPES.get(refusal.status, "")}


def random_id() -> str:
    """Make 32 random letters and digits, as llama-server's completion and tool-call ids."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(32))


def event(payload: object) -> bytes:
    """Frame one server-sent event as llama-server does: `data: <json>` and a blank line."""
    return b"data: " + _encode(payload) + b"\n\n"


def pack(vector: list[float]) -> str:
    """Write a vector as llama-server's base64 encoding does: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def model_id(info: ModelInfo) -> str:
    """The name llama-server knows a model by: the catalogue's, less the `:latest` it adds
    (llama-server names a model by its file or alias, never by an Ollama tag)."""
    return info.name.removesuffix(":latest")


def context_size(info: ModelInfo) -> int:
    """The context of each slot: llama-server's default, at most the model's own."""
    return min(_N_CTX, info.context_length)


def call_tokens(calls: list[dict[str, Any]]) -> list[str]:
    """The tokens of the tool call a chat makes: its name, then its arguments in pieces."""
    function = calls[0]["function"]
    return [function["name"], *split_json(_encode(function["arguments"]).decode())]


# -- requests ---------------------------------------------------------------------------


class _StreamOptions(Struct):
    include_usage: bool = False


class _Part(Struct):
    type: str = "text"
    text: str | None = None


class _Function(Struct):
    name: str = ""
    arguments: str | dict[str, Any] = ""


class _Call(Struct):
    function: _Function
    id: str | None = None
    type: str = "function"


class _Message(Struct):
    role: str = ""
    content: str | list[_Part] | None = None
    tool_calls: list[_Call] | None = None

    def ollama(self) -> ChatMessage:
        """The same message as the Ollama mode's planner reads it (its text parts only)."""
        content = self.content
        if not isinstance(content, str):
            content = "".join(p.text or "" for p in content or () if p.type == "text")
        calls = msgspec.to_builtins(self.tool_calls) if self.tool_calls else None
        return ChatMessage(role=self.role, content=content, tool_calls=calls)


class Sampling(Struct):
    """What chat and text completions share; other parameters are accepted and ignored."""

    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n_predict: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    response_format: dict[str, Any] | None = None

    def options(self) -> Options:
        """The Ollama mode's options: a token limit, a seed (-1: none), temperature, stops."""
        given = (self.n_predict, self.max_completion_tokens, self.max_tokens)
        limit = next((v for v in given if v is not None), None)
        seed = None if self.seed in _RANDOM_SEEDS else self.seed
        return Options(num_predict=limit, seed=seed, temperature=self.temperature, stop=self.stop)

    def format(self) -> str | dict[str, Any] | None:
        """The Ollama mode's `format` for `response_format`: "json", a schema, or None."""
        spec = self.response_format
        kind = (spec or {}).get("type") or "text"
        if spec is None or kind == "text":
            return None
        if kind == "json_object":
            schema = spec.get("schema")
        elif kind == "json_schema":
            inner = spec.get("json_schema")
            schema = inner.get("schema") if isinstance(inner, dict) else None
        else:
            raise BadRequest(
                f'response_format type must be one of "text" or "json_object", but got: {kind}'
            )
        return schema if isinstance(schema, dict) and schema else "json"

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(Sampling):
    """`POST /v1/chat/completions`."""

    messages: list[_Message] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None

    def chosen_tools(self) -> list[Any] | None:
        """The tools the model may call: none with `tool_choice` "none", a named one alone."""
        tools, choice = self.tools, self.tool_choice
        if not tools or choice == "none":
            return None
        if not isinstance(choice, dict):
            return tools
        wanted = (choice.get("function") or {}).get("name")
        named = [t for t in tools if _tool_name(t) == wanted]
        return named or tools


def _tool_name(tool: object) -> object:
    function = tool.get("function") if isinstance(tool, dict) else None
    return function.get("name") if isinstance(function, dict) else None


class CompletionRequest(Sampling):
    """`POST /v1/completions`: one prompt."""

    prompt: str | None = None


class EmbeddingRequest(Struct):
    """`POST /v1/embeddings`."""

    model: str | None = None
    input: str | list[str] | None = None
    encoding_format: str | None = None


# -- replies ----------------------------------------------------------------------------


def _rate(count: int, ns: int) -> tuple[float, float, float]:
    """Milliseconds in all, per token, and tokens per second (0 where nothing was timed)."""
    ms = ns / 1e6
    if not count or not ms:
        return ms, 0.0, 0.0
    return ms, ms / count, 1e3 * count / ms


class Usage(Struct, frozen=True):
    """What one answer cost: prompt and completion tokens, and how long each phase took."""

    prompt_tokens: int
    completion_tokens: int
    prompt_ns: int  # from the slot being ready to the first token
    predicted_ns: int  # from the first token to the last

    def usage(self) -> dict[str, object]:
        """The OpenAI `usage` object, with llama-server's cached-token detail (none cached)."""
        return {
            "completion_tokens": self.completion_tokens,
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.completion_tokens + self.prompt_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    def timings(self) -> dict[str, object]:
        """llama-server's own `timings` object (no prompt cache: `cache_n` is always 0)."""
        prompt_ms, prompt_per_token, prompt_per_second = _rate(self.prompt_tokens, self.prompt_ns)
        predicted_ms, per_token, per_second = _rate(self.completion_tokens, self.predicted_ns)
        return {
            "cache_n": 0,
            "prompt_n": self.prompt_tokens,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_per_token,
            "prompt_per_second": prompt_per_second,
            "predicted_n": self.completion_tokens,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": per_token,
            "predicted_per_second": per_second,
        }


class Reply:
    """The replies of one chat or text completion; they share one id, time and model.

    Streamed chat chunks are `chat.completion.chunk` objects: a first delta
    `{"role": "assistant", "content": null}`, one delta per token (`content`,
    `reasoning_content`, or a tool call's fragments), then a chunk with `finish_reason`
    and an empty delta that carries `timings`; with `include_usage` a last chunk with no
    choices carries `usage` and `timings` instead. Streamed text completions end with a
    chunk that has both, whatever `include_usage` says, as llama-server's do.
    """

    __slots__ = ("chat", "created", "id", "model")

    def __init__(self, model: str, *, chat: bool) -> None:
        self.chat = chat
        self.model = model
        self.id = "chatcmpl-" + random_id()  # text completions too, as llama-server has it
        self.created = int(time.time())

    def _object(self, choices: list[object], chunk: bool) -> dict[str, object]:
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        out: dict[str, object] = {"choices": choices, "created": self.created}
        if self.chat and chunk:
            out["id"] = self.id
        out["model"] = self.model
        out["system_fingerprint"] = BUILD_INFO
        out["object"] = kind
        return out

    def _delta(self, delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return self._object([{"finish_reason": finish, "index": 0, "delta": delta}], True)

    def _text(self, finish: str | None, text: str, chunk: bool) -> dict[str, object]:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return self._object([choice], chunk)

    def role(self) -> dict[str, object]:
        """The first chunk of a chat stream, before any token."""
        return self._delta({"role": "assistant", "content": None})

    def piece(self, text: str, *, thinking: bool = False) -> dict[str, object]:
        """The chunk of one token: content, reasoning (chat) or text (a text completion)."""
        if not self.chat:
            return {**self._text(None, text, True), "id": self.id}
        return self._delta({"reasoning_content" if thinking else "content": text})

    def call(self, call_id: str, name: str) -> dict[str, object]:
        """The chunk that opens a tool call: its id, type and name, no arguments yet."""
        function = {"name": name, "arguments": ""}
        return self._delta(
            {"tool_calls": [{"index": 0, "id": call_id, "type": "function", "function": function}]}
        )

    def arguments(self, fragment: str) -> dict[str, object]:
        """The chunk of one fragment of a tool call's arguments (a JSON string in pieces)."""
        return self._delta({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})

    def ending(self, finish: str, usage: Usage, include_usage: bool) -> list[dict[str, object]]:
        """The chunks that end a stream, before `[DONE]`."""
        if not self.chat:
            out = self._text(finish, "", True)
            out["usage"] = usage.usage()
            out["id"] = self.id
            out["timings"] = usage.timings()
            return [out]
        chunks = [self._delta({}, finish)]
        if include_usage:
            last = self._object([], True)
            last["usage"] = usage.usage()
            chunks.append(last)
        chunks[-1]["timings"] = usage.timings()
        return chunks

    def whole(
        self,
        finish: str | None,
        content: str,
        usage: Usage | None,
        *,
        reasoning: str = "",
        calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, object]:
        """The non-streamed answer; with no `usage` it is cut short (no usage, no timings)."""
        if self.chat:
            message: dict[str, object] = {"role": "assistant"}
            if reasoning:
                message["reasoning_content"] = reasoning
            message["content"] = None if calls else content
            if calls:
                message["tool_calls"] = calls
            out = self._object([{"finish_reason": finish, "index": 0, "message": message}], False)
        else:
            out = self._text(finish, content, False)
        if usage is not None:
            out["usage"] = usage.usage()
        out["id"] = self.id
        if usage is not None:
            out["timings"] = usage.timings()
        return out


# -- the host ---------------------------------------------------------------------------


def listing(infos: Iterable[ModelInfo]) -> dict[str, object]:
    """`/v1/models`: llama-server gives both an Ollama-style `models` list and OpenAI's
    `data`; where llama-server leaves a field empty, so does this."""
    created = int(time.time())
    models, data = [], []
    for info in infos:
        name = model_id(info)
        capabilities = ["completion"] if info.completes else []
        models.append({
            "name": name, "model": name, "modified_at": "", "size": "", "digest": "",
            "type": "model", "description": "", "tags": [""], "capabilities": capabilities,
            "parameters": "", "details": info.details(),
        })  # fmt: skip
        meta = {
            "n_ctx": context_size(info), "n_ctx_train": info.context_length,
            "n_embd": info.embedding_length, "size": info.size,
        }  # fmt: skip
        data.append({
            "id": name, "aliases": [name], "tags": [], "object": "model",
            "created": created, "owned_by": "llamacpp", "meta": meta,
        })  # fmt: skip
    return {"models": models, "object": "list", "data": data}


def properties(info: ModelInfo, total_slots: int) -> dict[str, object]:
    """`/props`: the fields of llama-server's that describe the model and its slots."""
    file = model_id(info).replace(":", "-")
    return {
        "default_generation_settings": {"params": _DEFAULT_PARAMS, "n_ctx": context_size(info)},
        "total_slots": total_slots,
        "model_alias": model_id(info),
        "model_path": f"/models/{file}" + ("" if file.endswith(".gguf") else ".gguf"),
        "modalities": {"vision": info.sees, "audio": False},
        "endpoint_slots": True,
        "endpoint_props": False,
        "endpoint_metrics": True,
        "build_info": BUILD_INFO,
        "is_sleeping": False,
    }
