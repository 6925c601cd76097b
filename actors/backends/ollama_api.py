"""Ollama's HTTP API as ollamesh reads it: one model of every answer it decodes.

Only the fields ollamesh uses are named; Ollama adds fields over time, and unknown ones
are ignored. The executor reads generation lines and the model lists; the health
monitor reads the lists with their details, `/api/ps` and pull progress.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

from schemas import Figures, Message
from schemas.fleet import LoadedModel, StoredModel

__all__ = [
    "Line",
    "Ps",
    "PullLine",
    "Tag",
    "Tags",
    "Version",
    "decode_line",
    "decode_ps",
    "decode_pull_line",
    "decode_tags",
    "decode_version",
]


class Line(Figures, kw_only=True):
    """One NDJSON line of `/api/generate` or `/api/chat`, or `/api/embed`'s reply; the
    last one carries Ollama's figures (the same fields ollamesh passes on)."""

    model: str = ""
    response: str = ""
    thinking: str | None = None
    message: Message | None = None
    done: bool = False
    embeddings: list[list[float]] | None = None
    error: str | None = None


class _Details(Struct, frozen=True):
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""


class Tag(Struct):
    """One model of `/api/tags` (and of `/api/ps`, which lists the same fields first)."""

    name: str
    size: int = 0
    digest: str = ""
    modified_at: str = ""
    details: _Details = _Details()

    def stored(self) -> StoredModel:
        """As the fleet view shows a model on disk."""
        d = self.details
        return StoredModel(
            name=self.name,
            size=self.size,
            digest=self.digest,
            modified_at=self.modified_at,
            family=d.family,
            parameter_size=d.parameter_size,
            quantization=d.quantization_level,
        )


class Tags(Struct):
    """`/api/tags`: the models on the host's disk."""

    models: list[Tag] = []


class Ps(Struct):
    """`/api/ps`: the models in memory; the entries decode straight into the fleet
    view's, the fields being Ollama's, by name."""

    models: list[LoadedModel] = []


class Version(Struct):
    """`/api/version`."""

    version: str = ""


class PullLine(Struct, kw_only=True):
    """One NDJSON line of `/api/pull`."""

    status: str = ""
    digest: str = ""
    total: int = 0
    completed: int = 0
    error: str | None = None


decode_line = msgspec.json.Decoder(Line).decode
decode_tags = msgspec.json.Decoder(Tags).decode
decode_ps = msgspec.json.Decoder(Ps).decode
decode_version = msgspec.json.Decoder(Version).decode
decode_pull_line = msgspec.json.Decoder(PullLine).decode
