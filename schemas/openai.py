"""OpenAI's API as ollamesh speaks it both ways: the request bodies the gateway decodes
and the OpenAI backend sends, and the streamed chunks and replies the backend reads
from an OpenAI-compatible engine (llama.cpp's llama-server, vLLM, SGLang...).

Only the fields ollamesh uses are named; unknown ones are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from schemas.requests import Name

__all__ = [
    "SAME_OPTIONS",
    "CallBody",
    "ChatCompletionBody",
    "ChatMessage",
    "CompletionBody",
    "EmbeddingBody",
    "EmbeddingReply",
    "FunctionCall",
    "ImageUrl",
    "JsonSchema",
    "ModelList",
    "Part",
    "ResponseFormat",
    "Sampling",
    "StreamChunk",
    "StreamOptions",
    "decode_chunk",
    "decode_embeddings",
    "decode_model_list",
]


# Sampling parameters with one name in OpenAI's bodies and Ollama's options; besides
# these, `max_tokens` is `num_predict`, and `stop` a string or a list.
SAME_OPTIONS = (
    "temperature", "top_p", "seed", "frequency_penalty", "presence_penalty", "top_k", "min_p",
)  # fmt: skip


class StreamOptions(Struct, omit_defaults=True):
    include_usage: bool = False


class JsonSchema(Struct, omit_defaults=True):
    name: str = ""
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(Struct, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class ImageUrl(Struct):
    url: str


class Part(Struct, omit_defaults=True):
    """One part of a message's content: text, or an image as a data URL."""

    type: str
    text: str | None = None
    image_url: ImageUrl | str | None = None


class FunctionCall(Struct, omit_defaults=True):
    name: str
    arguments: str = "{}"


class CallBody(Struct, omit_defaults=True):
    function: FunctionCall
    id: str | None = None
    type: str = "function"


class ChatMessage(Struct, omit_defaults=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Part] | None = None
    name: str | None = None
    tool_calls: list[CallBody] | None = None
    tool_call_id: str | None = None


Stop = str | list[str] | None
Temperature = Annotated[float, Meta(ge=0.0, le=2.0)]


class Sampling(Struct, kw_only=True, omit_defaults=True):
    """The parameters both completion routes share."""

    model: Annotated[Name, Meta(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Meta(gt=0)] | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    seed: int | None = None
    stop: Stop = None
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    n: int | None = None
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    # Not OpenAI's, but llama.cpp's, vLLM's and SGLang's.
    top_k: Annotated[int, Meta(ge=0)] | None = None
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None


class ChatCompletionBody(Sampling, kw_only=True, omit_defaults=True):
    """`POST /v1/chat/completions`."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_completion_tokens: Annotated[int, Meta(gt=0)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None


class CompletionBody(Sampling, kw_only=True, omit_defaults=True):
    """`POST /v1/completions`."""

    prompt: str | list[str]
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = None


class EmbeddingBody(Struct, kw_only=True, omit_defaults=True):
    """`POST /v1/embeddings`."""

    model: Annotated[Name, Meta(min_length=1)]
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(gt=0)] | None = None


# -- what an engine sends back ----------------------------------------------------------


class DeltaFunction(Struct):
    name: str | None = None
    arguments: str | None = None


class DeltaCall(Struct):
    """A fragment of a streamed tool call: the first names it, the rest add arguments."""

    index: int = 0
    id: str | None = None
    function: DeltaFunction | None = None


class Delta(Struct):
    content: str | None = None
    # Thinking: `reasoning_content` (llama.cpp, vLLM, DeepSeek) or `reasoning` (others).
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[DeltaCall] | None = None


class ChunkChoice(Struct):
    delta: Delta | None = None  # chat
    text: str | None = None  # completions
    finish_reason: str | None = None


class Usage(Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Timings(Struct):
    """llama.cpp's own figures for an answer (milliseconds)."""

    prompt_ms: float = 0.0
    predicted_ms: float = 0.0


class ErrorBody(Struct):
    message: str = ""
    type: str = ""


class StreamChunk(Struct):
    """One server-sent event of a streamed completion; with `include_usage` the last has
    empty `choices` and the `usage` (and llama.cpp's `timings`). An engine that fails
    mid-stream sends an `error` event instead."""

    choices: list[ChunkChoice] = []
    usage: Usage | None = None
    timings: Timings | None = None
    error: ErrorBody | str | None = None


class Embedding(Struct):
    embedding: list[float]
    index: int = 0


class EmbeddingReply(Struct):
    data: list[Embedding] = []
    usage: Usage | None = None


class ListedModel(Struct):
    id: str
    created: int = 0
    owned_by: str = ""
    # llama.cpp: the GGUF's parameters and size.
    meta: dict[str, Any] | None = None


class ModelList(Struct):
    data: list[ListedModel] = []


decode_chunk = msgspec.json.Decoder(StreamChunk).decode
decode_embeddings = msgspec.json.Decoder(EmbeddingReply).decode
decode_model_list = msgspec.json.Decoder(ModelList).decode
