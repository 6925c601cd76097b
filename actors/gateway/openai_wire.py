"""OpenAI's request bodies, and how each becomes a request of the wire contract.

Parameters are mapped to Ollama's options (`max_tokens` and `max_completion_tokens` to
`num_predict`, `temperature`, `top_p`, `seed`, `stop`, the penalties), `response_format`
to `format`, image parts to `images`, tool calls and results to Ollama's shape. One we
cannot honour (`n` > 1, `logprobs`, `echo`...) is an `Unsupported` naming it; others
that do not change an answer (`user`, `metadata`, `store`...) are ignored, as unknown
fields are.
"""

from __future__ import annotations

import base64
import re
import struct
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
    ImageUrl,
    Part,
    ResponseFormat,
    Sampling,
)
from schemas.requests import ToolCall, ToolCallFunction

__all__ = [
    "ChatCompletionBody",
    "CompletionBody",
    "EmbeddingBody",
    "Unsupported",
    "decode_body",
    "encode_vector",
    "to_chat",
    "to_embed",
    "to_generate",
]


class Unsupported(BadRequest):
    """A parameter (or a value of one) the fleet cannot honour; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


_AT = re.compile(r" - at `\$\.?([^`]*)`")


def decode_body(kind: type[Any], body: bytes) -> Any:
    """`body` as `kind`; a 400 naming the offending parameter if it is not."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _AT.search(text)
        raise Unsupported(found[1] if found else "", text) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None


def _refuse_unsupported(body: Sampling) -> None:
    """What no answer of ours can give: several choices, log probabilities, biases."""
    if body.n is not None and body.n != 1:
        raise Unsupported("n", f"n={body.n} is not supported: one choice per request")
    if body.logprobs or body.top_logprobs:
        param = "logprobs" if body.logprobs else "top_logprobs"
        raise Unsupported(param, f"{param} is not supported")
    if body.logit_bias:
        raise Unsupported("logit_bias", "logit_bias is not supported")


def _options(body: Sampling, max_tokens: int | None) -> Options | None:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    given = {name: getattr(body, name) for name in SAME_OPTIONS}
    given |= {"num_predict": max_tokens, "stop": stop or None}
    given = {name: value for name, value in given.items() if value is not None}
    return Options(**given) if given else None


def _format(fmt: ResponseFormat | None) -> str | dict[str, Any] | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return "json"
    if fmt.json_schema is None or fmt.json_schema.schema is None:
        raise Unsupported("response_format", "json_schema needs response_format.json_schema.schema")
    return fmt.json_schema.schema


_DATA_URL = re.compile(r"\Adata:image/[a-z0-9.+-]+;base64,(.*)\Z", re.S)


def _content(index: int, content: str | list[Part] | None) -> tuple[str, list[str]]:
    """A message's text and images (base64, as Ollama takes them)."""
    if content is None or isinstance(content, str):
        return content or "", []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "image_url":
            url = part.image_url.url if isinstance(part.image_url, ImageUrl) else part.image_url
            match = _DATA_URL.match(url or "")
            if match is None:
                raise Unsupported(where, "an image must be a base64 data URL (data:image/...)")
            images.append(match[1])
        else:
            raise Unsupported(where, f"content parts of type {part.type!r} are not supported")
    return "\n".join(texts), images


def _arguments(index: int, call: CallBody) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(call.function.arguments or "{}")
    except msgspec.DecodeError:
        raise Unsupported(
            f"messages[{index}].tool_calls", "tool call arguments must be a JSON object"
        ) from None
    if not isinstance(value, dict):
        raise Unsupported(f"messages[{index}].tool_calls", "tool call arguments must be an object")
    return value


def _messages(messages: list[ChatMessage]) -> list[Message]:
    called: dict[str, str] = {}  # tool call id -> the function's name, for tool results
    out: list[Message] = []
    for i, m in enumerate(messages):
        text, images = _content(i, m.content)
        calls = None
        if m.tool_calls:
            calls = [ToolCall(function=ToolCallFunction(name=c.function.name,
                                                        arguments=_arguments(i, c)))
                     for c in m.tool_calls]  # fmt: skip
            called.update({c.id: c.function.name for c in m.tool_calls if c.id})
        role = "system" if m.role == "developer" else m.role
        tool_name = called.get(m.tool_call_id or "", m.name) if m.role == "tool" else None
        out.append(Message(role=role, content=text, images=images or None, tool_calls=calls,
                           tool_name=tool_name))  # fmt: skip
    return out


def _tools(body: ChatCompletionBody) -> list[dict[str, Any]] | None:
    choice = body.tool_choice
    if choice is None or choice == "auto":
        return body.tools or None
    if choice == "none":
        return None
    raise Unsupported("tool_choice", f"tool_choice {choice!r} is not supported: auto or none")


def to_chat(body: ChatCompletionBody, request_id: str) -> ChatRequest:
    """The chat request a chat completion asks for."""
    _refuse_unsupported(body)
    think: bool | str | None = None
    if body.reasoning_effort is not None:
        think = False if body.reasoning_effort == "none" else body.reasoning_effort
    return ChatRequest(
        model=body.model, request_id=request_id, messages=_messages(body.messages),
        options=_options(body, body.max_completion_tokens or body.max_tokens),
        format=_format(body.response_format), tools=_tools(body), think=think,
        stream=body.stream,
    )  # fmt: skip


def to_generate(body: CompletionBody, request_id: str) -> GenerateRequest:
    """The generate request a (legacy) completion asks for."""
    _refuse_unsupported(body)
    if body.echo:
        raise Unsupported("echo", "echo is not supported")
    if body.best_of is not None and body.best_of != 1:
        raise Unsupported("best_of", "best_of is not supported: one completion per request")
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise Unsupported("prompt", "one prompt per request (a list of one is fine)")
        prompt = prompt[0]
    return GenerateRequest(
        model=body.model, request_id=request_id, prompt=prompt, suffix=body.suffix,
        options=_options(body, body.max_tokens), stream=body.stream,
    )  # fmt: skip


def to_embed(body: EmbeddingBody, request_id: str) -> EmbedRequest:
    """The embed request an embeddings call asks for (texts only, not token arrays)."""
    texts = body.input
    if isinstance(texts, list) and any(not isinstance(t, str) for t in texts):
        raise Unsupported("input", "token arrays are not supported: send text")
    return EmbedRequest(model=body.model, request_id=request_id, input=texts,  # type: ignore[arg-type]
                        dimensions=body.dimensions)  # fmt: skip


def encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    """An embedding as OpenAI sends it: floats, or little-endian float32 in base64."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
