"""Scripted answers: a test (or a demo) says what the host answers to a given prompt.

A pipeline under test sometimes needs a model to answer one exact thing (a plan of steps,
a classification) rather than deterministic filler. A `Script` matches the prompt (or the
last chat message) by substring and is answered with its `text`, token by token, with
Ollama's usual stream and figures; `count` limits it to the next K matching requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from actors.simulator.catalogue import canonical_name

__all__ = ["Script", "Scripts", "pieces"]

_PIECE = re.compile(r"\s*\S+|\s+")


class Script(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Answer `text` to requests whose prompt contains `match`."""

    match: str
    text: str
    count: int | None = None
    models: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.match:
            raise ValueError("match must not be empty")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1 (or null: until cleared)")


@dataclass
class _Armed:
    script: Script
    left: int | None


def pieces(text: str) -> list[str]:
    """Cut `text` into token-sized pieces (a word and the space before it) that join back."""
    return _PIECE.findall(text)


class Scripts:
    """The scripted answers of one host, the first match winning."""

    def __init__(self) -> None:
        self._armed: list[_Armed] = []

    def add(self, script: Script) -> None:
        self._armed.append(_Armed(script, script.count))

    def clear(self) -> None:
        self._armed.clear()

    @property
    def armed(self) -> list[Script]:
        """The scripts, each `count` being what is left of it."""
        return [msgspec.structs.replace(a.script, count=a.left) for a in self._armed]

    def take(self, model: str, prompt: str) -> str | None:
        """The scripted answer to `prompt` for `model`, if one matches (and count it)."""
        for armed in self._armed:
            script = armed.script
            if script.models is not None and model not in map(canonical_name, script.models):
                continue
            if script.match not in prompt:
                continue
            if armed.left is not None:
                armed.left -= 1
                if armed.left <= 0:
                    self._armed.remove(armed)
            return script.text
        return None
