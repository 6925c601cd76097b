"""Requests clients send: Ollama's own field names plus ollamesh's routing fields."""

from __future__ import annotations

import enum
import functools
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "LANGUAGES",
    "ROUTING_FIELDS",
    "CacheMode",
    "ChatRequest",
    "EmbedRequest",
    "GenerateRequest",
    "Kind",
    "Language",
    "Message",
    "Name",
    "Options",
    "Priority",
    "Request",
    "TemplateValue",
    "ToolCall",
    "ToolCallFunction",
    "without_routing",
]


class Kind(enum.StrEnum):
    """The three kinds of work a host can do."""

    GENERATE = "generate"
    CHAT = "chat"
    EMBED = "embed"


class CacheMode(enum.StrEnum):
    """Whether an answer may come from (and go to) the cache.

    `auto` caches deterministic requests only (`temperature` 0 or a fixed `seed`);
    `force` caches any; `off` neither reads nor writes the cache.
    """

    OFF = "off"
    AUTO = "auto"
    FORCE = "force"


class Priority(enum.StrEnum):
    """Interactive work goes first; batch work never holds more than all slots but one."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


NonNegInt = Annotated[int, Meta(ge=0)]
Probability = Annotated[float, Meta(ge=0.0, le=1.0)]
# Patterns are anchored with \A and \Z: `$` would also match before a final newline.
# A request id becomes a NATS subject token, so it is restricted to subject-safe characters.
RequestId = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_-]{1,64}\Z")]
# A name (model, role, task, template, host): bounded and free of control characters, which
# no log line or Postgres text column takes safely (Postgres refuses NUL outright).
Name = Annotated[str, Meta(max_length=256, pattern=r"\A[^\x00-\x1f\x7f]*\Z")]
# At most a day: queued work older than that is dropped as stale.
# The languages ollamesh's own prompts and answers come in (reasoning, construction).
Language = Literal["en", "de"]
LANGUAGES: tuple[Language, ...] = get_args(Language)
DeadlineMs = Annotated[int, Meta(gt=0, le=24 * 3600 * 1000)]


class Options(Struct, omit_defaults=True):
    """Ollama's model options; unset fields are left to the model's defaults.

    `None` means "not set": `temperature=0` is a real value and is sent as such.
    """

    temperature: Annotated[float, Meta(ge=0.0)] | None = None
    top_p: Probability | None = None
    top_k: NonNegInt | None = None
    min_p: Probability | None = None
    typical_p: Probability | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    seed: int | None = None
    # -1 generates until a stop condition, -2 until the context is full (Ollama's meaning).
    num_predict: Annotated[int, Meta(ge=-2)] | None = None
    num_keep: int | None = None
    stop: list[str] | None = None
    # Load-time options: changing them between requests makes Ollama reload the model.
    num_ctx: Annotated[int, Meta(gt=0)] | None = None
    num_batch: Annotated[int, Meta(gt=0)] | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: Annotated[int, Meta(gt=0)] | None = None
    use_mmap: bool | None = None
    numa: bool | None = None


class ToolCallFunction(Struct, omit_defaults=True):
    """The function a model asks to call, with its arguments."""

    name: str
    arguments: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolCall(Struct, omit_defaults=True):
    """One tool call in a chat message."""

    function: ToolCallFunction


class Message(Struct, omit_defaults=True):
    """One chat message, as Ollama's `/api/chat` takes and returns it."""

    role: str
    content: str = ""
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None


Format = str | dict[str, Any]
KeepAlive = str | int | float


class _Routed(Struct, kw_only=True, omit_defaults=True, tag_field="type"):
    """Fields every request carries: Ollama's model choice plus ollamesh's routing."""

    model: Name | None = None
    request_id: RequestId | None = None
    role: Name | None = None
    # A hint for choosing a model when none is named: "mathematical" picks that role.
    task: Name | None = None
    deadline_ms: DeadlineMs | None = None
    # Whether the model's fallback chain may serve: unset, it may for a model the fleet
    # knows (a host has it or a role names it) whose hosts are down or slow, and not for
    # an unknown one, which is `model_not_found`; true also for an unknown one; false never.
    fallback: bool | None = None
    # Whether an answer whose host fails after its first token may go on on another host
    # from the last token sent (false: it ends with a retryable `upstream_error`).
    migrate: bool = True
    priority: Priority = Priority.INTERACTIVE
    cache: CacheMode = CacheMode.AUTO
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    stream: bool = True


TemplateValue = str | int | float | bool


class _Templated(_Routed):
    """A stored prompt template instead of (generate) or after (chat) the text itself."""

    # The template's name (`<prefix>.v1.prompts.*`); its `{{variables}}` come from below.
    prompt_template: Name | None = None
    template_version: Annotated[int, Meta(gt=0)] | None = None
    variables: dict[Name, TemplateValue] | None = None


class GenerateRequest(_Templated, tag="generate"):
    """`/api/generate`: complete a prompt."""

    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    images: list[str] | None = None
    format: Format | None = None
    raw: bool | None = None
    think: bool | str | None = None


class ChatRequest(_Templated, tag="chat"):
    """`/api/chat`: continue a conversation."""

    messages: list[Message] = msgspec.field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: Format | None = None
    think: bool | str | None = None


class EmbedRequest(_Routed, tag="embed"):
    """`/api/embed`: embed one text or a batch."""

    input: str | list[str] = ""
    truncate: bool | None = None
    dimensions: Annotated[int, Meta(gt=0)] | None = None
    stream: bool = False


Request = GenerateRequest | ChatRequest | EmbedRequest


# ollamesh's own request fields: Ollama never sees them, and they do not shape an answer.
ROUTING_FIELDS = frozenset(
    {
        "request_id", "role", "task", "deadline_ms", "fallback", "migrate", "priority", "cache",
        "prompt_template", "template_version", "variables",
    }
)  # fmt: skip


@functools.cache
def _routing_defaults(kind: type[Request]) -> dict[str, Any]:
    # Looking the fields up costs a quarter of a millisecond: once per request type.
    return {
        f.name: f.default
        for f in msgspec.structs.fields(kind)
        if f.name in ROUTING_FIELDS and f.default is not msgspec.NODEFAULT
    }


def without_routing(request: Request, **changes: Any) -> Request:
    """`request` with ollamesh's own fields back at their defaults, and `changes` applied."""
    return msgspec.structs.replace(request, **(_routing_defaults(type(request)) | changes))
