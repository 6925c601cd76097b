"""The kinds of model host, and the client of each for the executor and the monitor."""

from __future__ import annotations

from collections.abc import Mapping

from actors.backends.admin import Admin
from actors.backends.backend import Backend
from actors.backends.ollama import OllamaClient
from actors.backends.ollama_admin import OllamaAdmin
from actors.backends.openai import OpenAIClient
from actors.backends.openai_admin import OpenAIAdmin

__all__ = ["admin_for", "backend_for"]

_BACKENDS: dict[str, type[OllamaClient | OpenAIClient]] = {
    "ollama": OllamaClient,
    "openai": OpenAIClient,
}
_ADMINS: dict[str, type[OllamaAdmin | OpenAIAdmin]] = {
    "ollama": OllamaAdmin,
    "openai": OpenAIAdmin,
}


def backend_for(
    kind: str, url: str, *, connect_timeout: float, aliases: Mapping[str, str]
) -> Backend:
    """The executor's client of a host of `kind` (`ollama` or `openai`)."""
    return _BACKENDS[kind](url, connect_timeout=connect_timeout, aliases=aliases)


def admin_for(kind: str, url: str, *, connect_timeout: float, aliases: Mapping[str, str]) -> Admin:
    """The health monitor's client of a host of `kind`."""
    return _ADMINS[kind](url, connect_timeout=connect_timeout, aliases=aliases)
