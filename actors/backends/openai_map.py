"""Requests of the wire contract as an OpenAI-compatible engine takes them.

`num_predict` becomes `max_tokens`; `temperature`, `top_p`, `seed`, `stop`, the penalties,
`top_k` and `min_p` keep their names (the last two are llama.cpp's, vLLM's and SGLang's);
Ollama's other options (`num_ctx`, `repeat_penalty`, `mirostat`...) are the engine's to
set at start and are not sent. `format` becomes `response_format` (`json_object`, or
`json_schema` with the schema); images become data URLs; tool calls go out with ids,
and a tool's result names the call it answers. `keep_alive` and `think` have no
counterpart and are left out; a generate request's `suffix`, `system` or `images`
cannot be honoured by `/v1/completions` and is a `BadRequest`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bus.errors import BadRequest
from schemas import ChatRequest, EmbedRequest, GenerateRequest, Message, Options
from schemas.openai import (
    SAME_OPTIONS,
    CallBody,
    ChatCompletionBody,
    ChatMessage,
    CompletionBody,
    EmbeddingBody,
    FunctionCall,
    ImageUrl,
    JsonSchema,
    Part,
    ResponseFormat,
    StreamOptions,
)

__all__ = ["chat_body", "completion_body", "embedding_body"]

_encode = msgspec.json.encode
_USAGE = StreamOptions(include_usage=True)
# The first bytes of an image's base64, for its data URL's media type.
_MEDIA = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lG": "image/gif", "UklG": "image/webp"}


def _sampling(options: Options | None) -> dict[str, Any]:
    if options is None:
        return {}
    given = {name: getattr(options, name) for name in SAME_OPTIONS}
    # Ollama's -1 (no limit) and -2 (fill the context) are the engine's default.
    if options.num_predict is not None and options.num_predict > 0:
        given["max_tokens"] = options.num_predict
    given["stop"] = options.stop or None
    return {name: value for name, value in given.items() if value is not None}


def _response_format(fmt: str | dict[str, Any] | None) -> ResponseFormat | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return ResponseFormat(type="json_object")
    if isinstance(fmt, str):
        raise BadRequest(f"format must be 'json' or a JSON schema, not {fmt!r}")
    return ResponseFormat(type="json_schema", json_schema=JsonSchema(name="answer", schema=fmt))


def _image(data: str) -> Part:
    media = next((m for head, m in _MEDIA.items() if data.startswith(head)), "image/png")
    return Part(type="image_url", image_url=ImageUrl(url=f"data:{media};base64,{data}"))


def _messages(messages: list[Message]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    pending: dict[str, list[str]] = {}  # a function's name -> ids of its unanswered calls
    for i, m in enumerate(messages):
        content: str | list[Part] = m.content
        if m.images:
            content = [Part(type="text", text=m.content), *map(_image, m.images)]
        calls = None
        if m.tool_calls:
            calls = []
            for j, call in enumerate(m.tool_calls):
                made = f"call_{i}_{j}"
                pending.setdefault(call.function.name, []).append(made)
                arguments = _encode(call.function.arguments).decode()
                function = FunctionCall(name=call.function.name, arguments=arguments)
                calls.append(CallBody(id=made, function=function))
        answers = None
        if m.role == "tool":
            ids = pending.get(m.tool_name or "") or next((v for v in pending.values() if v), [])
            answers = ids.pop(0) if ids else f"call_{i}"
        out.append(ChatMessage(role=m.role, content=content, tool_calls=calls,  # type: ignore[arg-type]
                               tool_call_id=answers))  # fmt: skip
    return out


def chat_body(request: ChatRequest, model: str) -> bytes:
    """`/v1/chat/completions`, streamed with the usage at the end."""
    body = ChatCompletionBody(
        model=model, messages=_messages(request.messages), stream=True, stream_options=_USAGE,
        response_format=_response_format(request.format), tools=request.tools,
        **_sampling(request.options),
    )  # fmt: skip
    return _encode(body)


def completion_body(request: GenerateRequest, model: str) -> bytes:
    """`/v1/completions` (a raw prompt), streamed with the usage at the end."""
    for name in ("suffix", "system", "images"):
        if getattr(request, name):
            raise BadRequest(
                f"{name} is not supported by OpenAI-compatible hosts' /v1/completions: use chat"
            )
    body = CompletionBody(model=model, prompt=request.prompt, stream=True, stream_options=_USAGE,
                          **_sampling(request.options))  # fmt: skip
    extra = _response_format(request.format)
    if extra is None:
        return _encode(body)
    # Not OpenAI's for completions, but llama.cpp's and vLLM's.
    return _encode({**msgspec.to_builtins(body), "response_format": msgspec.to_builtins(extra)})


def embedding_body(request: EmbedRequest, model: str) -> bytes:
    """`/v1/embeddings`: the texts, as floats."""
    texts: list[str | int | list[int]] | str = (
        request.input if isinstance(request.input, str) else list(request.input)
    )
    return _encode(EmbeddingBody(model=model, input=texts, dimensions=request.dimensions))
