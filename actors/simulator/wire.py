"""Ollama's request bodies as msgspec Structs, and the small pieces of its replies."""

from __future__ import annotations

import datetime
import re
import time
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

__all__ = [
    "BadRequest",
    "ChatMessage",
    "ChatRequest",
    "CopyRequest",
    "EmbedRequest",
    "EmbeddingsRequest",
    "GenerateRequest",
    "ModelRequest",
    "Options",
    "Refused",
    "bad_image",
    "decode",
    "iso",
    "thinks",
    "timestamp",
]

T = TypeVar("T")

KeepAlive = float | str | None  # seconds, or a Go duration such as "5m"; ints decode as floats
Format = str | dict[str, Any] | None  # "json" or a JSON schema


class Refused(Exception):
    """A request Ollama refuses before answering: its HTTP status and `error` text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BadRequest(Refused):
    """A request Ollama refuses with 400."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class Options(Struct):
    """The model options the simulator honours; every other option is accepted and ignored."""

    num_predict: int | None = None
    seed: int | None = None
    temperature: float | None = None
    stop: list[str] | str | None = None
    num_ctx: int | None = None

    def stops(self) -> list[str]:
        stop = self.stop
        return [s for s in ([stop] if isinstance(stop, str) else stop or []) if s]


class GenerateRequest(Struct):
    """`POST /api/generate`."""

    model: str | None = None
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    stream: bool | None = None
    raw: bool | None = None
    format: Format = None
    images: list[str] | None = None
    keep_alive: KeepAlive = None
    options: Options | None = None
    think: bool | str | None = None


class ChatMessage(Struct):
    """One message of a conversation."""

    role: str = ""
    content: str | None = None
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[Any] | None = None
    tool_name: str | None = None


class ChatRequest(Struct):
    """`POST /api/chat`."""

    model: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[Any] | None = None
    stream: bool | None = None
    format: Format = None
    keep_alive: KeepAlive = None
    options: Options | None = None
    think: bool | str | None = None


class EmbedRequest(Struct):
    """`POST /api/embed`."""

    model: str | None = None
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: int | None = None
    keep_alive: KeepAlive = None
    options: Options | None = None


class EmbeddingsRequest(Struct):
    """`POST /api/embeddings`, the older single-text form."""

    model: str | None = None
    prompt: str | None = None
    keep_alive: KeepAlive = None
    options: Options | None = None


class ModelRequest(Struct):
    """`/api/show`, `/api/pull` and `/api/delete`: a model name (`name` is the old spelling)."""

    model: str | None = None
    name: str | None = None
    stream: bool | None = None
    insecure: bool | None = None
    verbose: bool | None = None

    def target(self) -> str:
        return (self.model or self.name or "").strip()


class CopyRequest(Struct):
    """`POST /api/copy`."""

    source: str = ""
    destination: str = ""


_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


def decode(body: bytes, kind: type[T]) -> T:
    """Decode the request body as `kind`; BadRequest with the reason Ollama would give."""
    if not body.strip():
        raise BadRequest("missing request body")
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)  # type: ignore[no-any-return]
    except msgspec.DecodeError as exc:
        raise BadRequest(str(exc)) from exc


def thinks(value: bool | str | None) -> bool | None:
    """Read `think` as a yes/no: true, or a level such as "high"; None when not given."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in ("high", "medium", "low"):
            raise BadRequest(
                f'invalid think value: "{value}" (must be "high", "medium", "low", true, or false)'
            )
        return True
    return value


_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")


def bad_image(images: list[str]) -> str | None:
    """Say why Go's base64 decoder would refuse one of `images`; None if all are fine."""
    for image in images:
        wrong = _NOT_BASE64.search(image)
        if wrong is not None:
            return f"illegal base64 data at input byte {wrong.start()}"
        if len(image) % 4:
            return f"illegal base64 data at input byte {len(image) - len(image) % 4}"
    return None


_second = [0, ""]


def timestamp() -> str:
    """Write now as Ollama writes `created_at`: RFC 3339 in UTC with microseconds."""
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        # Formatting the seconds is the expensive part; a stream reuses it within a second.
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1e6):06d}Z"


def iso(moment: datetime.datetime) -> str:
    """Write a datetime as RFC 3339 with a `Z` for UTC."""
    return moment.isoformat().replace("+00:00", "Z")
