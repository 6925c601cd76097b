"""The prompt store's wire contract: stored templates, versions, rendering."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct

from schemas.requests import Name, TemplateValue

__all__ = [
    "Prompt",
    "PromptDeleted",
    "PromptList",
    "PromptPut",
    "PromptRef",
    "PromptRender",
    "Prompts",
    "Rendered",
    "TemplateUsage",
]

TemplateName = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9_.-]{1,128}\Z")]
Version = Annotated[int, Meta(gt=0)]


class PromptPut(Struct, kw_only=True, forbid_unknown_fields=True):
    """`prompts.put`: store a new version of a template (the first is version 1)."""

    name: TemplateName
    template: Annotated[str, Meta(min_length=1)]
    # Options the template's requests use unless they set their own (e.g. temperature).
    parameters: dict[str, Any] = {}
    description: str = ""


class PromptRef(Struct, kw_only=True, forbid_unknown_fields=True):
    """`prompts.get` and `prompts.delete`: a version, or (none) the latest / all."""

    name: TemplateName
    version: Version | None = None


class PromptList(Struct, kw_only=True, forbid_unknown_fields=True):
    """`prompts.list`: every template's latest version."""


class PromptRender(Struct, kw_only=True, forbid_unknown_fields=True):
    """`prompts.render`: fill a template's `{{variables}}`."""

    name: TemplateName
    version: Version | None = None
    variables: dict[Name, TemplateValue] = {}


class TemplateUsage(Struct, kw_only=True):
    """How requests rendered from a template fared (all versions), from the recorder."""

    uses: int = 0
    success_rate: float | None = None
    avg_latency_ms: float | None = None


class Prompt(Struct, kw_only=True, tag_field="type", tag="prompt"):
    """One stored version of a template, the names of its variables, and its usage."""

    name: str
    version: int
    template: str
    parameters: dict[str, Any]
    description: str
    created_at: float
    variables: list[str]
    usage: TemplateUsage


class Prompts(Struct, kw_only=True, tag_field="type", tag="prompts"):
    """The answer to `prompts.list`."""

    prompts: list[Prompt]


class Rendered(Struct, kw_only=True, tag_field="type", tag="rendered"):
    """A rendered template; `unused` names variables given but not in the template."""

    name: str
    version: int
    text: str
    parameters: dict[str, Any]
    unused: list[str]


class PromptDeleted(Struct, kw_only=True, tag_field="type", tag="prompt_deleted"):
    """The answer to `prompts.delete`: how many versions went."""

    name: str
    versions: int
